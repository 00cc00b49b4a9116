"""The views' tables in SQLite: :class:`SQLiteViewRecorder`.

Times are stored as integer microseconds since the epoch (UTC). The views file runs
WAL with ``synchronous = NORMAL``: a power loss can only lose whole trailing
transactions (rows and position together), which are then processed again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import OperationalError
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from projections.views._recorder import Tx, ViewRecorder, ViewSchema

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SQLiteViewRecorder(SQLiteTrackingRecorder, ViewRecorder):
    """A view in SQLite: the library's tracking recorder, with a tracking table of
    the view's own (the library's is always called ``tracking``), plus the view's
    tables. Times are stored as integer microseconds since the epoch (UTC)."""

    is_postgres = False

    def __init__(
        self,
        datastore: SQLiteDatastore,
        schema: ViewSchema,
        *,
        tables: Mapping[str, str] | None = None,
        tracking_table_name: str | None = None,
        index_prefix: str = "",
    ) -> None:
        self.schema = schema
        self.tables = dict(tables if tables is not None else schema.tables)
        self.tracking_table_name = tracking_table_name or schema.tracking_table_name
        self.index_prefix = index_prefix
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
            )
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
            "ix": self.index_prefix,
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

    def _lock_ddl(self, tx: Tx) -> None:
        pass  # BEGIN IMMEDIATE (see write) already serialises writers.

    def _table_exists(self, tx: Tx, table: str) -> bool:
        tx.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return tx.fetchone() is not None

    def _drop_statement(self, table: str) -> str:
        return f'DROP TABLE IF EXISTS "{table}"'

    def _rename_statement(self, table: str, new_name: str) -> str:
        return f'ALTER TABLE "{table}" RENAME TO "{new_name}"'

    def _lock_for_swap(self, tx: Tx) -> None:
        pass  # BEGIN IMMEDIATE holds the database's write lock.

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

    def bulk_delete(
        self, table: str, columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        match = " AND ".join(f"{name} = %s" for name, _ in columns)
        statement = self.sql(f"DELETE FROM {table} WHERE {match}")  # noqa: S608

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
