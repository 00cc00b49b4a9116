"""Retry requests: "retry the parked deliveries", asked by an operator (the console),
answered by whichever dispatcher is active.

The console cannot retry itself: a retry calls Temporal and records outcomes, which
only the dispatcher holding the single-active lock may do
(:mod:`~projections.dispatch.leadership`). So it records a request in a small table
of the store (``ledger_retry_requests``; on SQLite, in the dispatcher's file), and
the active dispatcher, which looks every ``lock_check_interval`` seconds, takes the
open requests, retries the parked deliveries once for all of them (the code of
``ledger dispatcher retry-parked``) and marks them done with how many it called.
While no dispatcher runs, a request stays open and waits for one.

Reading never creates the table: with none, there is no request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.store.connections import connect, prepare_store, setup_lock
from ledger.store.url import StoreConfig

TABLE = "ledger_retry_requests"
"""The table; in SQL text only with the store's schema, a name the URL's parser checked
(``[a-z_][a-z0-9_]*``), so the ``noqa: S608`` below are sound: values are parameters."""


@dataclass(frozen=True)
class RetryRequest:
    """One request: who asked and when; when it was answered and how many were called."""

    id: int
    requested_by: str
    requested_at: datetime
    done_at: datetime | None
    retried: int | None


class RetryRequests:
    """The retry requests of one store (a connection per call: they are rare)."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        if config.is_postgres:
            schema = config.env["POSTGRES_SCHEMA"] or "public"
            self._table = f'"{schema}".{TABLE}'
        else:
            self._table = TABLE
        self._created = False

    def request(self, requested_by: str) -> int:
        """Records an open request; returns its id."""
        self.create()
        now = _now()
        if self.config.is_postgres:
            with connect(self.config) as conn:
                row = conn.execute(
                    f"INSERT INTO {self._table} (requested_by, requested_at) "  # noqa: S608
                    "VALUES (%s, %s) RETURNING id",
                    (requested_by, now),
                ).fetchone()
                return int(row[0])
        with self._sqlite() as conn:
            cursor = conn.execute(
                f"INSERT INTO {self._table} (requested_by, requested_at) VALUES (?, ?)",  # noqa: S608
                (requested_by, now.isoformat()),
            )
            return int(cursor.lastrowid or 0)

    def open_ids(self) -> list[int]:
        """The ids of the requests not answered yet (none when no table)."""
        rows = self._select(f"SELECT id FROM {self._table} WHERE done_at IS NULL ORDER BY id")  # noqa: S608
        return [int(r[0]) for r in rows]

    def done(self, ids: Sequence[int], retried: int) -> None:
        """Marks ``ids`` answered: ``retried`` deliveries were called for them."""
        if not ids:
            return
        now = _now()
        if self.config.is_postgres:
            with connect(self.config) as conn:
                conn.execute(
                    f"UPDATE {self._table} SET done_at = %s, retried = %s WHERE id = ANY(%s)",  # noqa: S608
                    (now, retried, list(ids)),
                )
            return
        marks = ",".join("?" for _ in ids)
        with self._sqlite() as conn:
            conn.execute(
                f"UPDATE {self._table} SET done_at = ?, retried = ? WHERE id IN ({marks})",  # noqa: S608
                (now.isoformat(), retried, *ids),
            )

    def latest(self) -> RetryRequest | None:
        """The last request made, answered or not (None: none ever)."""
        rows = self._select(
            f"SELECT id, requested_by, requested_at, done_at, retried FROM {self._table} "  # noqa: S608
            "ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        id_, by, at, done_at, retried = rows[0]
        return RetryRequest(int(id_), str(by), _moment(at), _moment(done_at), retried)

    def create(self) -> None:
        """Creates the table when missing (``ledger setup`` does, as the owner)."""
        if self._created:
            return
        prepare_store(self.config)  # The schema (or the SQLite folder) may not exist yet.
        if self.config.is_postgres:
            with setup_lock(self.config), connect(self.config) as conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} (id BIGSERIAL PRIMARY KEY, "
                    "requested_by TEXT NOT NULL, requested_at TIMESTAMPTZ NOT NULL, "
                    "done_at TIMESTAMPTZ, retried INTEGER)"
                )
        else:
            with self._sqlite() as conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} (id INTEGER PRIMARY KEY "
                    "AUTOINCREMENT, requested_by TEXT NOT NULL, requested_at TEXT NOT NULL, "
                    "done_at TEXT, retried INTEGER)"
                )
        self._created = True

    def _select(self, sql: str) -> list[Any]:
        """Rows of ``sql``; none when the table does not exist (never asked)."""
        if self.config.is_postgres:
            import psycopg

            try:
                with connect(self.config) as conn:
                    return list(conn.execute(sql).fetchall())
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                return []
        try:
            with self._sqlite(create=False) as conn:
                return list(conn.execute(sql).fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e) or "unable to open" in str(e):
                return []
            raise

    def _sqlite(self, *, create: bool = True) -> Any:
        path = self.config.component_env("dispatcher")["SQLITE_DBNAME"]
        uri = f"file:{path}" if create else f"file:{path}?mode=rw"
        return _Closing(sqlite3.connect(uri, uri=True, timeout=30))


class _Closing:
    """A SQLite connection as a block: commits (or rolls back), then closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _moment(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
