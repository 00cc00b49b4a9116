"""What a view needs of its store, on either database: :class:`ViewRecorder`.

Each view is a tracking recorder of the ``eventsourcing`` library (the dialects:
:mod:`projections.views._postgres`, :mod:`projections.views._sqlite`) with a
tracking table of its own (``view_status_tracking``, ``view_audit_tracking``: one
row per log followed, named after the application, ``Ledger`` / ``Dispatcher``),
plus the view's tables, described by a :class:`ViewSchema`.

The position is written as a compare-and-set (:meth:`ViewRecorder.move_position`):
a page commits only if the recorded position is still the one the follower started
the page from (an ``UPDATE ... WHERE notification_id = expected``, or an insert
when there was none); otherwise :class:`PositionMovedError` rolls it back.

Schema versions: the tracking table also holds a ``__schema__`` row whose
``notification_id`` is the version of the view's tables (a view's tables made
before versions were recorded have none: version 1). The row is written in the
transaction that creates the tables, and a rebuild's tables carry their own, so
the version always describes the tables beside it (see ``docs/READ_MODELS.md``).
A view whose version is not its code's is *stale*: :class:`StaleViewError`.

Dead letters: events a follower could not decode, one row each in the view's
``..._dead_letters`` table, written in the transaction of the page they were in.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, Protocol

from eventsourcing.persistence import IntegrityError

from ledger.contract.errors import LedgerError, StoreUnavailableError


class PositionMovedError(Exception):
    """The view's recorded position is not the one a page was started from.

    Another writer (a second runner, a rebuild) moved it; the page was rolled back.
    """


class StaleViewError(StoreUnavailableError):
    """A view's tables have another schema version than this code reads: it must be
    rebuilt (``ledger projections rebuild NAME``) before it can be read or followed."""

    def __init__(self, name: str, found: int, wanted: int) -> None:
        super().__init__(
            f"the {name} view is stale (its tables have schema {found}, this version "
            f"reads schema {wanted}): rebuild it with `ledger projections rebuild {name}` "
            "(`ledger projections run` rebuilds stale views before following)"
        )
        self.name, self.found, self.wanted = name, found, wanted


class RebuildInProgressError(LedgerError):
    """Another process is rebuilding this view (it holds the view's rebuild lock)."""


class PoisonedEventError(LedgerError):
    """An event a follower cannot decode, with "stop on error" chosen."""


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
    schema: ViewSchema
    index_prefix: str = ""
    """Prefix of the names of the indexes this recorder creates (``{ix}`` in DDL): empty
    for a view's first tables, a fresh one for each rebuild's (index names are unique
    in a schema, and SQLite cannot rename an index when its table is swapped in)."""

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
    def bulk_delete(
        self, table: str, columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        """A statement deleting many rows at once, each matched on every one of
        ``columns`` (name, PostgreSQL type)."""

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

    # Position (compare-and-set).

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

    def positions(self) -> dict[str, int]:
        """Every recorded position: application name of the log -> notification id."""
        with self.read() as tx:
            tx.execute(
                self.sql(
                    "SELECT application_name, notification_id FROM {tracking} "
                    "WHERE application_name NOT IN (%s, %s)"
                ),
                RESERVED_ROWS,
            )
            return {str(row[0]): int(row[1]) for row in tx.fetchall()}

    # Tables and their schema version.

    def create_tables(self) -> None:
        """Creates the tracking table (the library's) and, when the view's main table
        is missing, the view's tables and indexes with the ``__schema__`` row, in one
        transaction; tables added since (dead letters) are created when missing.
        Safe when processes race to do it (they take turns)."""
        try:
            self.create_table()
        except IntegrityError:
            self.create_table()
        with self.write() as tx:
            self._lock_ddl(tx)
            if not self._table_exists(tx, self.tables[self.schema.main]):
                for statement in self.schema.ddl(self.is_postgres):
                    tx.execute(self.sql(statement))
                tx.execute(
                    self.sql(
                        "INSERT INTO {tracking} (application_name, notification_id) "
                        "VALUES (%s, %s) ON CONFLICT (application_name) DO NOTHING"
                    ),
                    (SCHEMA_ROW, self.schema.version),
                )
            tx.execute(self.sql(_DEAD_LETTERS_DDL))

    @abstractmethod
    def create_table(self) -> None:
        """The library recorder's: creates the tracking table."""

    @abstractmethod
    def _lock_ddl(self, tx: Tx) -> None:
        """Makes concurrent creators of the same tables take turns (until commit)."""

    @abstractmethod
    def _table_exists(self, tx: Tx, table: str) -> bool: ...

    def schema_version(self) -> int:
        """The schema version of the view's tables (1 when they record none)."""
        with self.read() as tx:
            tx.execute(
                self.sql("SELECT notification_id FROM {tracking} WHERE application_name = %s"),
                (SCHEMA_ROW,),
            )
            row = tx.fetchone()
        return int(row[0]) if row is not None else 1

    def drop_tables(self) -> None:
        """Drops the view's tables and its tracking table (a rebuild's, never a live
        view's: see :mod:`projections.views._rebuild`)."""
        with self.write() as tx:
            self._lock_ddl(tx)
            for table in [*self.tables.values(), self.tracking_table_name]:
                tx.execute(self._drop_statement(table))

    @abstractmethod
    def _drop_statement(self, table: str) -> str: ...

    @abstractmethod
    def _rename_statement(self, table: str, new_name: str) -> str: ...

    def swap_in(self, rebuilt: ViewRecorder, logs: Sequence[str]) -> bool:
        """Replaces this view's tables with ``rebuilt``'s in one transaction, when
        ``rebuilt``'s position is at or past this view's for every log in ``logs``
        (so readers never go back in time); False (nothing changed) otherwise.

        Live followers of this view are held off while it runs (the tracking table
        is locked first); afterwards their next page finds the position moved and
        they resync from the rebuilt one.
        """
        with self.write() as tx:
            self._lock_for_swap(tx)
            live = self._positions_in(tx, self)
            new = self._positions_in(tx, rebuilt)
            if any(new.get(log, 0) < live.get(log, 0) for log in logs):
                return False
            pairs = [(rebuilt.tables[key], table) for key, table in self.tables.items()]
            pairs.append((rebuilt.tracking_table_name, self.tracking_table_name))
            for old_name, live_name in pairs:
                self._before_drop(tx, live_name, old_name)
                tx.execute(self._drop_statement(live_name))
                tx.execute(self._rename_statement(old_name, live_name))
        return True

    @abstractmethod
    def _lock_for_swap(self, tx: Tx) -> None: ...

    def _before_drop(self, tx: Tx, live: str, rebuilt: str) -> None:  # noqa: B027
        """Hook: e.g. the rebuilt table gets the live one's grants (PostgreSQL)."""

    def _positions_in(self, tx: Tx, recorder: ViewRecorder) -> dict[str, int]:
        tx.execute(
            recorder.sql(
                "SELECT application_name, notification_id FROM {tracking} "
                "WHERE application_name NOT IN (%s, %s)"
            ),
            RESERVED_ROWS,
        )
        return {str(row[0]): int(row[1]) for row in tx.fetchall()}

    # Dead letters.

    def record_dead_letters(self, tx: Tx, letters: Sequence[DeadLetter]) -> None:
        """Writes dead letters (in the transaction of their page)."""
        if not letters:
            return
        statement = self._statement(
            "INSERT INTO {dead} (follower, position, event_id, event_version, topic, "
            "error, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (follower, position) DO NOTHING"
        )
        now = self.db_time(datetime.now(UTC))
        tx.executemany(
            statement,
            [
                (d.follower, d.position, d.event_id, d.event_version, d.topic, d.error, now)
                for d in letters
            ],
        )

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter of the view, by follower and position."""
        with self.read() as tx:
            tx.execute(
                self.sql(
                    "SELECT follower, position, event_id, event_version, topic, error, "
                    "recorded_at FROM {dead} ORDER BY follower, position"
                )
            )
            return [
                DeadLetter(str(f), int(p), str(i), v, str(t), str(e), self.py_time(at))
                for f, p, i, v, t, e, at in tx.fetchall()
            ]


SCHEMA_ROW = "__schema__"
"""The tracking row holding the schema version of the view's tables."""
RESERVED_ROWS = ("__migration__", SCHEMA_ROW)
"""Tracking rows that are not positions (``__migration__`` is the library's)."""

_DEAD_LETTERS_DDL = (
    "CREATE TABLE IF NOT EXISTS {dead} ("
    "follower text NOT NULL, "
    "position {bigint} NOT NULL, "
    "event_id text NOT NULL, "
    "event_version {bigint}, "
    "topic text NOT NULL, "
    "error text NOT NULL, "
    "recorded_at {ts} NOT NULL, "
    "PRIMARY KEY (follower, position))"
)


class DeadLetter(NamedTuple):
    """An event a follower could not decode, and why (never a token: see :func:`scrub`)."""

    follower: str
    """``<view><-<log>``, e.g. ``status<-Ledger``."""
    position: int
    """The event's notification id in the log followed."""
    event_id: str
    """The execution (or delivery) id the event belongs to."""
    event_version: int | None
    topic: str
    error: str
    recorded_at: datetime | None = None


_LONG_OPAQUE = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
MAX_ERROR_CHARS = 500


def scrub(error: BaseException) -> str:
    """One line saying what went wrong, with every long opaque run of characters (a
    base64 token, a key, a blob) replaced by its length, at most 500 characters."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    text = _LONG_OPAQUE.sub(lambda m: f"<{len(m[0])} chars>", text)
    return text[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class ViewSchema:
    """A view's tables: names, DDL (``{name}`` references, dialect fragments, ``{ix}``
    before each index name) and the version of that shape."""

    tracking_table_name: str
    tables: Mapping[str, str]
    """Logical name -> table; must include ``dead`` (the view's dead letters)."""
    ddl: Callable[[bool], Sequence[str]]
    """DDL statements for PostgreSQL (True) or SQLite (False), in order."""
    version: int = 1
    """Bumped whenever the tables' shape or meaning changes: a view's tables of another
    version are stale and must be rebuilt."""
    main: str = ""
    """The logical name of the table whose absence means "create everything"."""


def as_utc(value: datetime) -> datetime:
    """``value`` with its time zone, UTC when it has none (how the views read a
    naive datetime given to a query)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
