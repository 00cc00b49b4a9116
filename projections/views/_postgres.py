"""The views' tables in PostgreSQL: :class:`PostgresViewRecorder`.

A page is two round trips in psycopg's pipeline mode (begin, the position's
compare-and-set and the rows the page updates; then every write, the check of the
position, and the commit), each table written by one ``unnest`` statement with
binary parameters. A view's transactions commit without waiting for their WAL
flush (``synchronous_commit = off``): a crash can only lose whole trailing
transactions, rows and position together, which are then processed again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor as PgCursor
from psycopg import sql
from psycopg.rows import TupleRow, tuple_row

from projections.views._recorder import Tx, ViewRecorder, ViewSchema


class PostgresViewRecorder(PostgresTrackingRecorder, ViewRecorder):
    """A view in PostgreSQL: the library's tracking recorder plus the view's tables."""

    is_postgres = True

    def __init__(
        self,
        datastore: PostgresDatastore,
        schema: ViewSchema,
        *,
        tables: Mapping[str, str] | None = None,
        tracking_table_name: str | None = None,
        index_prefix: str = "",
    ) -> None:
        self.schema = schema
        self.tables = dict(tables if tables is not None else schema.tables)
        self.index_prefix = index_prefix
        super().__init__(
            datastore, tracking_table_name=tracking_table_name or schema.tracking_table_name
        )

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
            "ix": self.index_prefix,
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

    def _create_table(self, curs: Any) -> None:
        # Two processes creating the same tables at once: take turns.
        self._lock_ddl(curs)
        super()._create_table(curs)

    def _lock_ddl(self, tx: Tx) -> None:
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            (f"{self.datastore.schema}.{self.tracking_table_name}",),
        )

    def _table_exists(self, tx: Tx, table: str) -> bool:
        # A cursor of its own: in pipeline mode, a statement's rows read on the cursor
        # that also sent statements whose results nobody reads (the GRANTs below)
        # could be taken for theirs ("the last operation didn't produce records").
        cursor = _own_cursor(tx)
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (self._qualified(table),))
        return bool(cursor.fetchone()[0])

    def _qualified(self, table: str) -> str:
        return sql.Identifier(self.datastore.schema, table).as_string(None)

    def _drop_statement(self, table: str) -> str:
        return f"DROP TABLE IF EXISTS {self._qualified(table)}"

    def _rename_statement(self, table: str, new_name: str) -> str:
        return (
            f"ALTER TABLE {self._qualified(table)} "
            f"RENAME TO {sql.Identifier(new_name).as_string(None)}"
        )

    def _lock_for_swap(self, tx: Tx) -> None:
        # The tracking table first, as every follower's page begins with it.
        tx.execute(f"LOCK TABLE {self._qualified(self.tracking_table_name)} IN EXCLUSIVE MODE")

    def _before_drop(self, tx: Tx, live: str, rebuilt: str) -> None:
        # Grants are per table: the rebuilt one gets those of the one it replaces
        # (``ledger roles`` granted the follower and reader roles their rights); a
        # table new in this schema version (none to replace) gets those of the view's
        # tracking table, which every follower writes and every reader reads.
        source = live if self._table_exists(tx, live) else self.tracking_table_name
        grants = _own_cursor(tx)  # As above.
        grants.execute(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = %s AND table_name = %s AND grantee <> current_user",
            (self.datastore.schema, source),
        )
        for grantee, privilege in grants.fetchall():
            if privilege in _PRIVILEGES:
                tx.execute(
                    f"GRANT {privilege} ON {self._qualified(rebuilt)} "
                    f"TO {sql.Identifier(grantee).as_string(None)}"
                )

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

    def bulk_delete(
        self, table: str, columns: Sequence[tuple[str, str]]
    ) -> Callable[[Tx, Sequence[Sequence[Any]]], None]:
        names = ", ".join(name for name, _ in columns)
        arrays = ", ".join(f"%b::{pg_type}[]" for _, pg_type in columns)
        match = " AND ".join(f"a.{name} = d.{name}" for name, _ in columns)
        statement = self.sql(
            f"DELETE FROM {table} AS a USING unnest({arrays}) AS d({names}) WHERE {match}"  # noqa: S608
        )
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


_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}
)


def _own_cursor(tx: Tx) -> Any:
    """Another cursor on ``tx``'s connection, in its transaction (a psycopg cursor)."""
    return cast(Any, tx).connection.cursor(row_factory=tuple_row)
