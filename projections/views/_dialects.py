"""The views store's SQL, on PostgreSQL and SQLite: where a view keeps its rows and positions.

Each view is a tracking recorder of the ``eventsourcing`` library
(:class:`~eventsourcing.postgres.PostgresTrackingRecorder` or
:class:`~eventsourcing.sqlite.SQLiteTrackingRecorder`) whose create statements
also create the view's tables, with a tracking table of its own
(``view_status_tracking``, ``view_audit_tracking``: one row per log followed,
named after the application, ``Ledger`` / ``Dispatcher``). :class:`ViewRecorder`
is what a view needs of it on either database; :class:`ViewStore` opens the
views' datastore and makes one recorder per :class:`ViewSchema`.

The position is written as a compare-and-set (:meth:`ViewRecorder.move_position`):
a page commits only if the recorded position is still the one the follower started
the page from (an ``UPDATE ... WHERE notification_id = expected``, or an insert
when there was none); otherwise :class:`PositionMovedError` rolls it back.

On PostgreSQL a page is two round trips in psycopg's pipeline mode (begin, the
position's compare-and-set and the rows the page updates; then every write, the
check of the position, and the commit), each table written by one ``unnest``
statement with binary parameters. A view's transactions commit without waiting
for their WAL flush (``synchronous_commit = off``; ``synchronous = NORMAL`` on the
SQLite views file): a crash can only lose whole trailing transactions, rows and
position together, which are then processed again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, cast

from eventsourcing.persistence import InfrastructureFactory, IntegrityError, OperationalError
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg import Cursor as PgCursor
from psycopg import sql
from psycopg.rows import DictRow, TupleRow, tuple_row

from ledger.contract.errors import ConfigurationError


class PositionMovedError(Exception):
    """The view's recorded position is not the one a page was started from.

    Another writer (a second runner, a rebuild) moved it; the page was rolled back.
    """


class Tx(Protocol):
    """The part of a DB-API cursor the views use (tuple rows)."""

    def execute(self, query: Any, params: Any = ..., /) -> Any:
        """Runs one statement (``query`` from :meth:`ViewRecorder.sql`)."""

    def executemany(self, query: Any, params_seq: Any, /) -> Any:
        """Runs one statement once per parameter row."""

    def fetchall(self) -> Sequence[Any]:
        """The rest of the last statement's rows."""

    def fetchone(self) -> Any:
        """The next row of the last statement, or None."""


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
    def max_tracking_id(self, application_name: str) -> int | None:
        """The position recorded for the log of ``application_name`` (None before any)."""

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
    def db_time(self, value: datetime | None) -> Any:
        """``value`` as the store's time columns hold it (naive datetimes are UTC)."""

    @abstractmethod
    def py_time(self, value: Any) -> datetime | None:
        """A time column's value as an aware datetime in UTC."""

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
        """Every recorded position: application name of the log -> notification id."""
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
        """The recorder of one view, its tables created when missing (unless the
        store's environment says a runtime role may not create tables)."""
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
        """Closes the datastore (every recorder made here with it)."""
        self.factory.close()


def as_utc(value: datetime) -> datetime:
    """``value`` with its time zone, UTC when it has none (how the views read a
    naive datetime given to a query)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
