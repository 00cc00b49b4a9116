"""Read models: SQL views of the ledger and of the dispatcher's log, kept by page.

Two views live in the *views store* (``config.component_env("views")``: on
PostgreSQL the ledger's own schema, on SQLite a file beside the ledger's,
``ledger.views.db``):

- ``status`` (:mod:`projections.status_view`): one row per execution, follows
  the ledger.
- ``audit`` (:mod:`projections.audit_view`): one row per terminal execution,
  follows the ledger (``Created``/``Completed``) and the dispatcher's log
  (every ``Delivery`` event), with one position per log.

How a view is kept
------------------
Each view is a tracking recorder of the ``eventsourcing`` library
(:class:`~eventsourcing.postgres.PostgresTrackingRecorder` or
:class:`~eventsourcing.sqlite.SQLiteTrackingRecorder`) whose create statements
also create the view's tables, with a tracking table of its own
(``view_status_tracking``, ``view_audit_tracking``: one row per log followed,
named after the application, ``Ledger`` / ``Dispatcher``). A follower reads a
page of notifications with :class:`~projections.subscription.PollingSubscription`
(LISTEN/NOTIFY wake-ups on PostgreSQL, polling everywhere), decodes it outside
any transaction, then writes the page's rows and the page's last position in
**one transaction**, on the recorder's own datastore. Events whose topic the view
does not know are skipped, but the position still moves past them.

The position is written as a compare-and-set: a page commits only if the
recorded position is still the one the follower started the page from (an
``UPDATE ... WHERE notification_id = expected``, or an insert when there was
none). A second writer of the same view (a second ``projections run``, or a
rebuild in another process) therefore never interleaves pages with this one:
the loser of a race rolls back, re-reads the position and carries on from there.
Every event is applied exactly once, whatever crashes, kills or races happen.

Throughput
----------
A catch-up reads and decodes the next page in a thread of its own while the
current one is written (:class:`_ReadAhead`). On PostgreSQL a page is two round
trips in psycopg's pipeline mode (begin, the position's compare-and-set and the
rows the page updates; then every write, the check of the position, and the
commit), each table written by one ``unnest`` statement with binary parameters.
A view's transactions commit without waiting for their WAL flush
(``synchronous_commit = off``; ``synchronous = NORMAL`` on the SQLite views
file): a crash can only lose whole trailing transactions, rows and position
together, which are then processed again. ``bench/catchup.py`` measures it all
beside raw psycopg.

Rebuild
-------
:meth:`Views.rebuild` deletes the view's rows and its positions in one
transaction, then replays every log it follows from position zero, page by page,
until it reaches the heads it saw when it started (appends may go on meanwhile;
anything after is left to :meth:`Views.catch_up` / :meth:`Views.run`, which
pick up from the rebuilt position). It only reads the ledger and the dispatcher's
log: it never calls Temporal and never writes the dispatcher's records or
position.

Decoding
--------
Views decode only the fields they need. When an event's class has no
``class_version`` above 1 (so there is nothing to upcast), the stored JSON is
read directly (after the application's cipher and compressor, if any): the time
and phase of ``StatusChanged``/``Completed`` from the exact text the library
writes (:func:`timestamp_and_phase`, anything else falls back to a JSON parse),
and only the protobuf values the view uses; otherwise the application's mapper
decodes the whole event, with upcasting. ``LogReader.fast = False`` forces the
mapper; ``bench/catchup.py`` measures both, and a test checks they agree.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import logging
import os
import queue
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast

from eventsourcing.application import Application
from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import Environment, TopicError, resolve_topic
from google.protobuf.message import Message
from psycopg import Cursor as PgCursor
from psycopg import sql
from psycopg.rows import DictRow, TupleRow, tuple_row

from ledger.application import open_ledger_with
from ledger.contract.errors import ConfigurationError
from ledger.contract.names import COMPLETED_TOPICS
from ledger.store.transcodings import message_classes
from ledger.store.url import StoreConfig
from projections.dispatch.log import DispatcherLog
from projections.subscription import PollingSubscription

if TYPE_CHECKING:
    from projections.views.audit import AuditView
    from projections.views.status import StatusView

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 5000
"""Events per page, hence per transaction, at most (a follower that keeps up writes
what has arrived, usually far less). Measured by ``bench/catchup.py``: a rebuild ran
at 28,800 events/s with pages of 500 and about 50,000 with pages of 5,000 (a
transaction and its round trips cost as much as ~1,000 events' rows, and an
execution's events mostly fall into one page, so it gets one row write, not several),
for about 20 MB more memory, which does not grow with the log."""

PREFETCH_PAGES = 1
"""Pages read and decoded ahead of the one being written, during a catch-up (with
pages of thousands of events, one is enough to keep the writer busy; more only hold
objects that the garbage collector then traverses again and again)."""

VIEW_NAMES: tuple[str, ...] = ("status", "audit")


_T = TypeVar("_T")


@dataclass(frozen=True)
class Lag:
    """How far a follower is behind the log it follows."""

    name: str
    """``<follower><-<log>``, e.g. ``status<-Ledger``, ``dispatcher<-Ledger``."""
    position: int
    """The last notification id the follower has recorded (0 before any)."""
    head: int
    """The head of the log it follows (see :meth:`Views.lag` for each head)."""

    @property
    def lag(self) -> int:
        return self.head - self.position


class PositionMovedError(Exception):
    """The view's recorded position is not the one a page was started from.

    Another writer (a second runner, a rebuild) moved it; the page was rolled back.
    """


# The views store: SQL that runs on both PostgreSQL and SQLite.


class Tx(Protocol):
    """The part of a DB-API cursor the views use (tuple rows)."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, query: Any, params_seq: Any, /) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...


class ViewRecorder(ABC):
    """What a view needs of its store, on either database.

    SQL is written once with ``%s`` placeholders and ``{name}`` table references;
    :meth:`sql` quotes the table names (schema-qualified on PostgreSQL) and
    switches placeholders to ``?`` on SQLite. No value is ever formatted into SQL.
    """

    is_postgres: ClassVar[bool]
    tracking_table_name: str
    tables: Mapping[str, str]
    """Logical name -> table name of the view's tables (rows deleted on reset)."""

    @abstractmethod
    def sql(self, template: str, **fragments: str) -> str:
        """``template`` with its table names quoted and its placeholders adapted."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Tx]:
        """A write transaction, committed when the block ends (rolled back on error)."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """A cursor for reading."""

    @abstractmethod
    def id_list(self, ids: Sequence[str]) -> Any:
        """The parameter for an ``{in_ids}`` fragment: ids as one value."""

    @abstractmethod
    def max_tracking_id(self, application_name: str) -> int | None: ...

    @abstractmethod
    def bulk(
        self, insert: str, columns: Sequence[tuple[str, str]], conflict: str
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        """A statement writing many rows at once: ``insert`` (``INSERT INTO {t} AS a``),
        the columns as (name, PostgreSQL type), and the ``ON CONFLICT ...`` clause.

        PostgreSQL: one ``INSERT ... SELECT * FROM unnest(...)`` with one array per
        column (one round trip). SQLite: ``executemany`` of the single-row form.
        Rows must be unique on the conflict target.
        """

    @abstractmethod
    def bulk_update(
        self, table: str, key: tuple[str, str], columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        """A statement updating many rows at once: ``table`` (``{name}``), the key
        column and the columns set, as (name, PostgreSQL type). Each row is
        ``(key, *columns)``; a row is only updated when its ``version`` column is
        below the given one (the columns must include ``version``, last).
        """

    # Conversions between Python values and the store's column types.

    @abstractmethod
    def db_time(self, value: datetime | None) -> Any: ...

    @abstractmethod
    def py_time(self, value: Any) -> datetime | None: ...

    # Position (compare-and-set) and reset.

    def move_position(
        self, tx: Tx, application_name: str, expected: int | None, position: int
    ) -> None:
        """Sets the position from ``expected`` to ``position`` or raises PositionMovedError."""
        self._send_move(tx, application_name, expected, position)
        self._check_move(tx, application_name, expected)

    def _send_move(
        self, tx: Tx, application_name: str, expected: int | None, position: int
    ) -> None:
        if expected is None:
            tx.execute(
                self._statement(
                    "INSERT INTO {tracking} (application_name, notification_id) "
                    "VALUES (%s, %s) ON CONFLICT (application_name) DO NOTHING "
                    "RETURNING notification_id"
                ),
                (application_name, position),
            )
        else:
            tx.execute(
                self._statement(
                    "UPDATE {tracking} SET notification_id = %s "
                    "WHERE application_name = %s AND notification_id = %s "
                    "RETURNING notification_id"
                ),
                (position, application_name, expected),
            )

    def _check_move(self, tx: Tx, application_name: str, expected: int | None) -> None:
        if tx.fetchone() is None:
            raise PositionMovedError(
                f"{self.tracking_table_name}: position for {application_name} moved from "
                f"{expected} by another writer"
            )

    def _statement(self, template: str) -> str:
        """:meth:`sql` of a fixed template, formatted once."""
        cache: dict[str, str] = self.__dict__.setdefault("_statements", {})
        statement = cache.get(template)
        if statement is None:
            statement = cache[template] = self.sql(template)
        return statement

    def write_page(
        self,
        application_name: str,
        expected: int | None,
        position: int,
        body: Callable[[Tx], None],
    ) -> None:
        """One transaction: the position from ``expected`` to ``position``, then ``body``."""
        with self.write() as tx:
            self.move_position(tx, application_name, expected, position)
            body(tx)

    def reset(self) -> None:
        """Deletes every row of the view and every position, in one transaction."""
        with self.write() as tx:
            self._delete_rows(tx)
            tx.execute(
                self.sql("DELETE FROM {tracking} WHERE application_name <> %s"),
                ("__migration__",),
            )

    @abstractmethod
    def _delete_rows(self, tx: Tx) -> None: ...

    def create_tables(self) -> None:
        """Creates the view's tables when missing (safe when processes race to do it:
        the loser's attempt to record the tracking table's migration row fails, and
        a second attempt finds everything in place)."""
        try:
            self.create_table()
        except IntegrityError:
            self.create_table()

    @abstractmethod
    def create_table(self) -> None:
        """The library recorder's: creates the tracking table and the view's tables."""

    def positions(self) -> dict[str, int]:
        with self.read() as tx:
            tx.execute(
                self.sql(
                    "SELECT application_name, notification_id FROM {tracking} "
                    "WHERE application_name <> %s"
                ),
                ("__migration__",),
            )
            return {str(row[0]): int(row[1]) for row in tx.fetchall()}


class PostgresViewRecorder(PostgresTrackingRecorder, ViewRecorder):
    """A view in PostgreSQL: the library's tracking recorder plus the view's tables."""

    is_postgres = True

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        tracking_table_name: str,
        tables: Mapping[str, str],
        ddl: Sequence[str],
    ) -> None:
        self.tables = dict(tables)
        super().__init__(datastore, tracking_table_name=tracking_table_name)
        for statement in ddl:
            self.sql_create_statements.append(sql.SQL(self.sql(statement)))  # type: ignore[arg-type]

    def sql(self, template: str, **fragments: str) -> str:
        names = {
            key: sql.Identifier(self.datastore.schema, table).as_string(None)
            for key, table in {**self.tables, "tracking": self.tracking_table_name}.items()
        }
        dialect = {
            "greatest": "GREATEST",
            "ts": "timestamptz",
            "bool": "boolean",
            "bigint": "bigint",
            "id": 'text COLLATE "C"',
            "in_ids": "= ANY(%b::text[])",
        }
        return template.format(**names, **dialect, **fragments)

    def write_page(
        self,
        application_name: str,
        expected: int | None,
        position: int,
        body: Callable[[Tx], None],
    ) -> None:
        """As :meth:`ViewRecorder.write_page`, one round trip shorter: the position's
        update goes out with the page's first read, and is checked before commit."""
        with self.write() as tx:
            moved = cast(PgCursor[TupleRow], tx).connection.cursor(row_factory=tuple_row)
            self._send_move(moved, application_name, expected, position)
            body(tx)
            self._check_move(moved, application_name, expected)

    def _create_table(self, curs: PgCursor[DictRow]) -> None:
        # Two processes creating the same tables at once: take turns.
        curs.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            (f"{self.datastore.schema}.{self.tracking_table_name}",),
            prepare=False,
        )
        super()._create_table(curs)

    @contextmanager
    def write(self) -> Iterator[Tx]:
        # Pipeline mode: statements whose results are not read are sent together
        # (a page costs three round trips: begin + position, existing rows, the rest
        # + commit); an error in any of them aborts the transaction as usual.
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline(),
            conn.transaction(),
        ):
            cursor = conn.cursor(row_factory=tuple_row)
            # A view's transaction need not wait for its WAL flush: a crash can
            # only lose whole trailing transactions, rows and position together,
            # and those pages are then processed again.
            cursor.execute("SET LOCAL synchronous_commit = off")
            yield cursor

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self.datastore.get_connection() as conn:
            yield conn.cursor(row_factory=tuple_row)

    def _delete_rows(self, tx: Tx) -> None:
        tables = ", ".join(self.sql("{" + key + "}") for key in self.tables)
        tx.execute("TRUNCATE " + tables)

    def id_list(self, ids: Sequence[str]) -> Any:
        return list(ids)

    def bulk(
        self, insert: str, columns: Sequence[tuple[str, str]], conflict: str
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        names = ", ".join(name for name, _ in columns)
        # Binary parameters (%b): psycopg's text format quotes array items with regexes.
        arrays = ", ".join(f"%b::{pg_type}[]" for _, pg_type in columns)
        statement = self.sql(f"{insert} ({names}) SELECT * FROM unnest({arrays}) {conflict}")  # noqa: S608
        width = len(columns)

        def run(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
            if rows:
                tx.execute(statement, [[row[i] for row in rows] for i in range(width)])

        return run

    def bulk_update(
        self, table: str, key: tuple[str, str], columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        assert columns[-1][0] == "version"
        all_columns = [key, *columns]
        names = ", ".join(name for name, _ in all_columns)
        arrays = ", ".join(f"%b::{pg_type}[]" for _, pg_type in all_columns)
        assignments = ", ".join(f"{name} = u.{name}" for name, _ in columns)
        statement = self.sql(
            f"UPDATE {table} AS a SET {assignments} "  # noqa: S608
            f"FROM unnest({arrays}) AS u({names}) "
            f"WHERE a.{key[0]} = u.{key[0]} AND a.version < u.version"
        )
        width = len(all_columns)

        def run(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
            if rows:
                tx.execute(statement, [[row[i] for row in rows] for i in range(width)])

        return run

    def db_time(self, value: datetime | None) -> Any:
        return value

    def py_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SQLiteViewRecorder(SQLiteTrackingRecorder, ViewRecorder):
    """A view in SQLite: the library's tracking recorder, with a tracking table of
    the view's own (the library's is always called ``tracking``), plus the view's
    tables. Times are stored as integer microseconds since the epoch (UTC)."""

    is_postgres = False

    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        tracking_table_name: str,
        tables: Mapping[str, str],
        ddl: Sequence[str],
    ) -> None:
        self.tables = dict(tables)
        self.tracking_table_name = tracking_table_name
        self._ddl = list(ddl)
        super().__init__(datastore)
        self.insert_tracking_statement = self.sql(
            "INSERT INTO {tracking} VALUES (:application_name, :notification_id) "
            "ON CONFLICT (application_name) DO UPDATE "
            "SET notification_id = :notification_id "
            "WHERE {tracking}.notification_id < :notification_id "
            "RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = self.sql(
            "SELECT MAX(notification_id) FROM {tracking} WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            self.sql(
                "CREATE TABLE IF NOT EXISTS {tracking} ("
                "application_name TEXT, notification_id INTEGER, "
                "PRIMARY KEY (application_name)) WITHOUT ROWID"
            ),
            *(self.sql(statement) for statement in self._ddl),
        ]

    def sql(self, template: str, **fragments: str) -> str:
        names = {
            key: '"' + table + '"'
            for key, table in {**self.tables, "tracking": self.tracking_table_name}.items()
        }
        dialect = {
            "greatest": "MAX",
            "ts": "INTEGER",
            "bool": "INTEGER",
            "bigint": "INTEGER",
            "id": "TEXT",
            "in_ids": "IN (SELECT value FROM json_each(%s))",
        }
        return template.format(**names, **dialect, **fragments).replace("%s", "?")

    @contextmanager
    def write(self) -> Iterator[Tx]:
        # BEGIN IMMEDIATE takes the write lock first (waiting up to the busy
        # timeout), so the reads in the transaction see the latest commit.
        with self.datastore.get_connection(commit=True) as conn:
            cursor = conn.cursor().sqlite_cursor
            try:
                # WAL with synchronous=NORMAL: a power loss can only lose whole
                # trailing transactions (rows and position together), which are
                # then processed again.
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                conn.commit()
            except sqlite3.OperationalError as e:
                conn.rollback()
                raise OperationalError(str(e)) from e
            except BaseException:
                conn.rollback()
                raise
            finally:
                cursor.close()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self.datastore.get_connection(commit=False) as conn:
            cursor = conn.cursor().sqlite_cursor
            try:
                yield cursor
            except sqlite3.OperationalError as e:
                raise OperationalError(str(e)) from e
            finally:
                cursor.close()

    def _delete_rows(self, tx: Tx) -> None:
        for key in self.tables:
            tx.execute(self.sql("DELETE FROM {" + key + "}"))  # noqa: S608

    def id_list(self, ids: Sequence[str]) -> Any:
        return json.dumps(list(ids))

    def bulk(
        self, insert: str, columns: Sequence[tuple[str, str]], conflict: str
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join("%s" for _ in columns)
        statement = self.sql(f"{insert} ({names}) VALUES ({marks}) {conflict}")

        def run(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
            if rows:
                tx.executemany(statement, rows)

        return run

    def bulk_update(
        self, table: str, key: tuple[str, str], columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        assert columns[-1][0] == "version"
        assignments = ", ".join(f"{name} = %s" for name, _ in columns)
        statement = self.sql(
            f"UPDATE {table} SET {assignments} WHERE {key[0]} = %s AND version < %s"  # noqa: S608
        )

        def run(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
            if rows:
                tx.executemany(statement, [(*row[1:], row[0], row[-1]) for row in rows])

        return run

    def db_time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def py_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        seconds, micros = divmod(int(value), 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


@dataclass(frozen=True)
class ViewSchema:
    """A view's tables: names and DDL (``{name}`` references, dialect fragments)."""

    tracking_table_name: str
    tables: Mapping[str, str]
    ddl: Callable[[bool], Sequence[str]]
    """DDL statements for PostgreSQL (True) or SQLite (False), in order."""


class ViewStore:
    """The views' database: one library datastore, one recorder per view."""

    def __init__(self, env: Mapping[str, str]) -> None:
        # Like the library's applications: the process environment, then the given
        # variables (so POSTGRES_POOL_SIZE and friends apply here too).
        self.factory = InfrastructureFactory.construct(Environment("Views", {**os.environ, **env}))
        datastore = getattr(self.factory, "datastore", None)
        if isinstance(datastore, PostgresDatastore):
            self.is_postgres = True
        elif isinstance(datastore, SQLiteDatastore):
            self.is_postgres = False
        else:
            self.factory.close()
            raise ConfigurationError(
                "read models need a PostgreSQL or SQLite store, not "
                f"{env.get('PERSISTENCE_MODULE')!r}"
            )
        self.datastore: PostgresDatastore | SQLiteDatastore = datastore

    def recorder(self, schema: ViewSchema) -> ViewRecorder:
        recorder: ViewRecorder
        if isinstance(self.datastore, PostgresDatastore):
            recorder = PostgresViewRecorder(
                self.datastore,
                tracking_table_name=schema.tracking_table_name,
                tables=schema.tables,
                ddl=schema.ddl(True),
            )
        else:
            recorder = SQLiteViewRecorder(
                self.datastore,
                tracking_table_name=schema.tracking_table_name,
                tables=schema.tables,
                ddl=schema.ddl(False),
            )
        if getattr(self.factory, "env_create_table", lambda: True)():  # False: a runtime role.
            recorder.create_tables()
        return recorder

    def close(self) -> None:
        self.factory.close()


# The logs the views follow.


_PB_CLASSES: dict[str, type[Message]] = {
    "pb:" + cls.DESCRIPTOR.full_name: cls for cls in message_classes()
}


def pb_value(value: Mapping[str, Any]) -> Message:
    """A protobuf value as the ledger's transcoding stores it (``pb:<name>``, base64)."""
    cls = _PB_CLASSES[value["_type_"]]
    return cls.FromString(base64.b64decode(value["_data_"]))


def iso_value(value: Mapping[str, Any]) -> datetime:
    """A datetime as the library's ``DatetimeAsISO`` transcoding stores it."""
    return datetime.fromisoformat(value["_data_"])


_TIMESTAMP_AND_PHASE = re.compile(
    rb'\{"timestamp":\{"_type_":"datetime_iso","_data_":"([^"]*)"\},"phase":([0-9]+),'
)
_CLASS_VERSION = b'"class_version":'


def timestamp_and_phase(data: bytes) -> tuple[datetime, int] | None:
    """(timestamp, phase) of a stored event whose JSON starts with exactly
    ``{"timestamp":{"_type_":"datetime_iso","_data_":"<iso>"},"phase":<digits>,``
    (how the library encodes the ledger's StatusChanged and Completed), read
    without parsing the rest; None when the text has any other shape."""
    match = _TIMESTAMP_AND_PHASE.match(data)
    if match is None or _CLASS_VERSION in data:
        return None
    try:
        timestamp = datetime.fromisoformat(match[1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return timestamp, int(match[2])


@lru_cache(maxsize=256)
def _is_current_version(topic: str) -> bool | None:
    """True if ``topic``'s class has nothing to upcast; None if the topic is unknown."""
    try:
        cls = resolve_topic(topic)
    except (TopicError, ImportError, AttributeError):
        return None
    return int(getattr(cls, "class_version", 1)) == 1


class LogReader:
    """One application's notification log, as a view reads it."""

    def __init__(self, app: Application[Any]) -> None:
        self.app = app
        self.name = app.name
        self.recorder: ApplicationRecorder = app.recorder
        self.mapper = app.mapper
        self.fast = True
        """Read the stored JSON directly when nothing needs upcasting (see the module doc)."""

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def plain_topics(self, topics: Collection[str]) -> frozenset[str]:
        """Those of ``topics`` whose stored state is the library's plain JSON, as is:
        the fast path is on, there is no cipher nor compressor, and their classes
        have nothing to upcast (a page's events are then read without more checks)."""
        if not self.fast or self.mapper.cipher is not None or self.mapper.compressor is not None:
            return frozenset()
        return frozenset(topic for topic in topics if _is_current_version(topic))

    def data(self, notification: Notification) -> bytes | None:
        """The event's stored JSON (after the cipher and compressor), or None when it
        must go through :meth:`event` (fast path off, or a class with upcasting)."""
        if not self.fast or not _is_current_version(notification.topic):
            return None
        data = notification.state
        if self.mapper.cipher is not None:
            data = self.mapper.cipher.decrypt(data)
        if self.mapper.compressor is not None:
            data = self.mapper.compressor.decompress(data)
        return data

    def state(self, notification: Notification) -> dict[str, Any] | None:
        """The event's stored state as plain JSON (transcoded values left as
        ``{"_type_", "_data_"}``), or None when it must go through :meth:`event`."""
        data = self.data(notification)
        return self.parse(data) if data is not None else None

    @staticmethod
    def parse(data: bytes) -> dict[str, Any] | None:
        """:meth:`data` as JSON; None if the stored event carries a class_version."""
        state: dict[str, Any] = json.loads(data)
        return None if "class_version" in state else state

    def event(self, notification: Notification) -> Any | None:
        """The domain event, decoded by the application's mapper; None if unknown."""
        if _is_current_version(notification.topic) is None:
            return None
        return self.mapper.to_domain_event(notification)


# Views and their followers.


class View(ABC, Generic[_T]):
    """A read model: decodes pages of one log's notifications, writes their rows.

    ``prepare`` runs outside any transaction; ``write`` inside the page's
    transaction, after the position moved.
    """

    name: ClassVar[str]
    schema: ClassVar[ViewSchema]

    def __init__(self, recorder: ViewRecorder, logs: Mapping[str, LogReader]) -> None:
        self.recorder = recorder
        self.logs = dict(logs)

    @property
    @abstractmethod
    def follows(self) -> Mapping[str, Sequence[str]]:
        """Application names of the logs followed -> topics wanted (() = all)."""

    @abstractmethod
    def prepare(self, log: LogReader, page: Sequence[Notification]) -> _T:
        """Decodes a page (no database access here)."""

    @abstractmethod
    def write(self, tx: Tx, log_name: str, prepared: _T) -> None:
        """Writes a decoded page's rows (inside the page's transaction)."""


class Follower:
    """Keeps one view up to date with one log, page by page.

    Its subscription may read ahead of the recorded position; whenever a page
    fails to commit, the follower re-reads the position and restarts from it
    before going on, so no page is skipped or applied twice.
    """

    def __init__(
        self,
        view: View[Any],
        log: LogReader,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        poll_interval: float = 1.0,
        listen: bool = False,
    ) -> None:
        self.view = view
        self.log = log
        self.topics = list(view.follows[log.name])
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.listen = listen
        self.name = f"{view.name}<-{log.name}"
        self.events = 0
        """Notifications processed (written or skipped) by this follower."""
        self._recorded: int | None = None
        self._subscription: PollingSubscription | None = None
        self._stale = True
        self.resync()

    @property
    def position(self) -> int:
        return self._recorded or 0

    def resync(self) -> None:
        """Re-reads the recorded position and restarts reading from it."""
        self.close()
        self._recorded = self.view.recorder.max_tracking_id(self.log.name)
        self._subscription = PollingSubscription(
            self.log.recorder,
            gt=self.position,
            topics=self.topics,
            poll_interval=self.poll_interval,
            page_size=self.page_size,
            listen=self.listen,
        )
        self._subscription.__enter__()
        self._stale = False

    def stop(self) -> None:
        """Ends a wait in :meth:`step` early (the follower can be resumed with resync)."""
        if self._subscription is not None:
            self._subscription.stop()

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.__exit__(None, None, None)
            self._subscription = None
        self._stale = True

    def step(self, timeout: float) -> int:
        """Processes the next page (waiting up to ``timeout`` for one); returns its size.

        With a topic filter, a follower that finds nothing new records the head it
        read before looking, so its position (and lag) reaches the head too.
        """
        if self._stale:
            self.resync()
        assert self._subscription is not None
        try:
            head = self.log.head() if self.topics else 0
            page = self._subscription.next_page(timeout)
            if page:
                self._commit(page[-1].id, self.view.prepare(self.log, page))
                self.events += len(page)
            elif head > self.position:
                self._commit(head, None)
        except PositionMovedError:
            logger.info("%s: position moved by another writer; resuming from it", self.name)
            self.resync()
            return 0
        except BaseException:
            self._stale = True
            raise
        return len(page)

    def _commit(self, position: int, prepared: Any) -> None:
        def body(tx: Tx) -> None:
            if prepared is not None:
                self.view.write(tx, self.log.name, prepared)

        self.view.recorder.write_page(self.log.name, self._recorded, position, body)
        self._recorded = position

    def catch_up(
        self, target: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Processes pages until the position reaches ``target`` (default: the head
        now); returns the number of notifications processed.

        Reading and decoding run a few pages ahead in a thread of their own
        (:class:`_ReadAhead`), so the next page is read while this one is written.
        """
        if target is None:
            target = self.log.head()
        processed = 0
        while self.position < target:
            if self._stale:
                self.resync()
            assert self._subscription is not None
            progressed = False
            try:
                with _ReadAhead(self, self._subscription, target) as pages:
                    for position, count, prepared in pages:
                        if position > self.position:
                            self._commit(position, prepared)
                            progressed = True
                        processed += count
                        self.events += count
                        if progress is not None:
                            progress(self.position)
            except PositionMovedError:
                logger.info("%s: position moved by another writer; resuming from it", self.name)
                self._stale = True
                continue
            except BaseException:
                self._stale = True
                raise
            if not progressed:
                logger.warning(
                    "%s: no events found up to %d (position %d)", self.name, target, self.position
                )
                break
        return processed


class _ReadAhead:
    """Reads and decodes a follower's next pages in a thread, into a small queue.

    Iterating yields ``(position, notifications, prepared)`` per page (``prepared``
    is None when a filtered follower only moves its position to the head), until
    ``target`` is reached or nothing more is found. Errors in the thread are raised
    by the iteration. At most :data:`PREFETCH_PAGES` pages are held.
    """

    def __init__(self, follower: Follower, subscription: PollingSubscription, target: int) -> None:
        self.follower = follower
        self.subscription = subscription
        self.target = target
        self.pages: queue.Queue[tuple[int, int, Any] | BaseException | None] = queue.Queue(
            maxsize=PREFETCH_PAGES
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name=f"read {follower.name}", daemon=True)

    def __enter__(self) -> Iterator[tuple[int, int, Any]]:
        self.thread.start()
        return self._items()

    def __exit__(self, *args: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _items(self) -> Iterator[tuple[int, int, Any]]:
        while True:
            item = self.pages.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: tuple[int, int, Any] | BaseException | None) -> bool:
        while not self.stopping.is_set():
            try:
                self.pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        follower = self.follower
        last = follower.position
        try:
            while last < self.target and not self.stopping.is_set():
                head = follower.log.head() if follower.topics else 0
                page = self.subscription.next_page(0)
                if page:
                    last = page[-1].id
                    item = (last, len(page), follower.view.prepare(follower.log, page))
                elif head > last:
                    last = head  # Filtered: nothing wanted up to the head.
                    item = (last, 0, None)
                else:
                    break
                if not self._put(item):
                    return
        except BaseException as e:
            self._put(e)
        self._put(None)


class Views:
    """The read models: open them, keep them up to date, rebuild them, see their lag."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        poll_interval: float | None = None,
    ) -> None:
        from projections.views.audit import AuditView
        from projections.views.status import StatusView

        self.config = config
        self.page_size = page_size
        self.poll_interval = (
            poll_interval if poll_interval is not None else (1.0 if config.is_postgres else 0.1)
        )
        with contextlib.ExitStack() as opened:
            self.ledger = open_ledger_with(config, cache=False)  # A follower only reads.
            opened.callback(self.ledger.close)
            self.dispatcher_log = DispatcherLog(config.component_env("dispatcher"))
            opened.callback(self.dispatcher_log.close)
            self.store = ViewStore(config.component_env("views"))
            opened.callback(self.store.close)
            logs = {
                self.ledger.name: LogReader(self.ledger),
                self.dispatcher_log.name: LogReader(self.dispatcher_log),
            }
            self.logs = logs
            self.status: StatusView = StatusView(self.store.recorder(StatusView.schema), logs)
            self.audit: AuditView = AuditView(self.store.recorder(AuditView.schema), logs)
            opened.pop_all()  # Opened: close() closes them from now on.
        self._views: dict[str, View[Any]] = {"status": self.status, "audit": self.audit}

    def view(self, name: str) -> View[Any]:
        try:
            return self._views[name]
        except KeyError:
            raise ValueError(
                f"unknown view {name!r}: expected one of {', '.join(self._views)}"
            ) from None

    def _followers(self, names: Sequence[str], *, listen: bool = False) -> list[Follower]:
        followers: list[Follower] = []
        for name in names:
            view = self.view(name)
            for log_name in view.follows:
                followers.append(
                    Follower(
                        view,
                        self.logs[log_name],
                        page_size=self.page_size,
                        poll_interval=self.poll_interval,
                        listen=listen,
                    )
                )
        return followers

    def catch_up(self, names: Sequence[str] = VIEW_NAMES) -> None:
        """Processes every view in ``names`` up to the current head of each log it follows."""
        for name in names:
            self.view(name)  # Unknown names fail before any work.
        for follower in self._followers(names):
            try:
                follower.catch_up()
            finally:
                follower.close()

    def catch_up_log(self, name: str, log_name: str) -> int:
        """Catches one view up with one of its logs only; returns notifications processed."""
        view = self.view(name)
        if log_name not in view.follows:
            raise ValueError(f"view {name!r} does not follow {log_name!r}")
        follower = Follower(view, self.logs[log_name], page_size=self.page_size)
        try:
            return follower.catch_up()
        finally:
            follower.close()

    def run(self, stop: threading.Event, names: Sequence[str] = VIEW_NAMES) -> None:
        """Follows the logs live until ``stop`` is set (one thread per view and log).

        Store errors (a lost connection, a lock timeout) are logged and retried
        with backoff; any other error stops every follower and is raised here.
        """
        for name in names:
            self.view(name)
        followers = self._followers(names, listen=True)
        errors: list[BaseException] = []
        failed = threading.Event()

        def follow(follower: Follower) -> None:
            backoff = 0.1
            try:
                while not stop.is_set() and not failed.is_set():
                    try:
                        follower.step(self.poll_interval)
                        backoff = 0.1
                    except (OperationalError, InterfaceError) as e:
                        if stop.is_set():
                            return
                        logger.warning("%s: %s; retrying in %.1fs", follower.name, e, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, 5.0)
                        follower.resync()
            except BaseException as e:
                errors.append(e)
                failed.set()

        threads = [
            threading.Thread(target=follow, args=(f,), name=f"view {f.name}", daemon=True)
            for f in followers
        ]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set() and not failed.is_set():
                stop.wait(0.1)
        finally:
            failed.set()
            for follower in followers:
                follower.stop()
            for thread in threads:
                thread.join()
            for follower in followers:
                follower.close()
        if errors:
            raise errors[0]

    def rebuild(self, name: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Drops the view's rows and positions and replays its logs from position zero.

        ``progress(done, total)`` is called after each page: log positions covered
        so far and in all (the heads when the rebuild started, summed over the logs
        followed). Returns the number of events processed. Appends may go on
        meanwhile; events after the starting heads are left to catch_up/run.
        """
        view = self.view(name)
        targets = {log_name: self.logs[log_name].head() for log_name in view.follows}
        total = sum(targets.values())
        view.recorder.reset()
        processed = 0
        done_before = 0
        for log_name in view.follows:
            follower = Follower(view, self.logs[log_name], page_size=self.page_size)
            try:

                def report(position: int, base: int = done_before) -> None:
                    if progress is not None:
                        done = base + position
                        progress(min(done, total), total)

                processed += follower.catch_up(targets[log_name], report)
                done_before += max(follower.position, targets[log_name])
            finally:
                follower.close()
        if progress is not None:
            progress(total, total)
        return processed

    def lag(self) -> list[Lag]:
        """Each view's position against the head of each log it follows, and the
        dispatcher's (``dispatcher<-Ledger``).

        Heads: the last notification id of the log followed; for the dispatcher,
        which only follows ``Completed`` events and records a position only once
        every completion up to it has its outcome, the id of the last ``Completed``
        event in the ledger.
        """
        lags: list[Lag] = []
        # Positions first, heads after: a follower that moves meanwhile can make a lag
        # look larger than it is, never negative.
        positions = {name: view.recorder.positions() for name, view in self._views.items()}
        dispatcher_position = self.dispatcher_log.process_recorder.max_tracking_id(self.ledger.name)
        heads = {log_name: log.head() for log_name, log in self.logs.items()}
        for name, view in self._views.items():
            for log_name in view.follows:
                lags.append(
                    Lag(
                        f"{view.name}<-{log_name}",
                        positions[name].get(log_name, 0),
                        heads[log_name],
                    )
                )
        lags.append(
            Lag(
                f"dispatcher<-{self.ledger.name}",
                dispatcher_position or 0,
                last_notification_id(self.ledger.recorder, COMPLETED_TOPICS),
            )
        )
        return lags

    def close(self) -> None:
        self.store.close()
        self.ledger.close()
        self.dispatcher_log.close()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


def freeze_startup_objects() -> None:
    """Takes every object alive now out of the garbage collector's sight (``gc.freeze``).

    For a process about to follow or rebuild views for a long time, once its
    stores are open (``ledger projections run`` and ``rebuild`` call it): the
    modules, applications and connections made at start-up are never garbage, yet
    every full collection traverses them all. A catch-up promotes a page of events
    to the oldest generation about once a page, so full collections run that often;
    with the start-up objects frozen each costs a few milliseconds instead of ~40
    (measured here: a rebuild spent 2 us of its ~17 us per event in them, 0.25
    once frozen). Objects made afterwards are collected as usual; a start-up
    object that later becomes garbage inside a reference cycle is never freed (a
    bounded, one-time cost).
    """
    gc.collect()
    gc.freeze()


def last_notification_id(recorder: ApplicationRecorder, topics: Sequence[str]) -> int:
    """The id of the last notification with one of ``topics`` (0 if none): a backward
    scan of the notification id index that stops at the first match."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    if isinstance(recorder, PostgresApplicationRecorder):
        statement = sql.SQL(
            "SELECT notification_id FROM {table} WHERE topic = ANY(%s) "
            "ORDER BY notification_id DESC LIMIT 1"
        ).format(table=sql.Identifier(recorder.datastore.schema, recorder.events_table_name))
        with recorder.datastore.get_connection() as conn:
            cursor: PgCursor[TupleRow] = conn.cursor(row_factory=tuple_row)
            row = cursor.execute(statement, (list(topics),)).fetchone()
            return int(row[0]) if row else 0
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement_text = (
            f'SELECT rowid FROM "{recorder.events_table_name}" '  # noqa: S608
            f"WHERE topic IN ({', '.join('?' * len(topics))}) "
            "ORDER BY rowid DESC LIMIT 1"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement_text, tuple(topics))
            found = c.fetchone()
            return int(found[0]) if found else 0
    # Other recorders: scan forward (in-memory stores only).
    last, start = 0, 0
    while True:
        page = recorder.select_notifications(
            start=start, limit=1000, topics=list(topics), inclusive_of_start=False
        )
        if not page:
            return last
        last = start = page[-1].id
