"""A small table of the ledger's own beside the library's events table.

The secret vault and the key record keep rows next to the events, in the same
PostgreSQL schema or SQLite file, through the application recorder's datastore (its
pool and transactions). Statements are written once in SQLite's style (``?``
placeholders, ``{table}``) and adapted to PostgreSQL (``%s``, schema-qualified table).
In-memory stores have no datastore: :attr:`SideTable.available` is False there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder


class SideTable:
    """Named statements on one table of the ledger's own."""

    def __init__(
        self, recorder: ApplicationRecorder, table: str, statements: Mapping[str, str]
    ) -> None:
        self.recorder = recorder
        self.table = table
        self._statements: dict[str, Any] = {}
        # The PostgreSQL module (and psycopg, a tenth of a second to import) is loaded
        # only when a store uses it: a recorder can be PostgreSQL's only once it is.
        postgres = sys.modules.get("eventsourcing.postgres")
        if postgres is not None and isinstance(recorder, postgres.PostgresApplicationRecorder):
            from psycopg import sql

            identifier = sql.Identifier(recorder.datastore.schema, table)
            self._statements = {
                name: sql.SQL(text.replace("?", "%s")).format(table=identifier)
                for name, text in statements.items()
            }
        elif isinstance(recorder, SQLiteApplicationRecorder):
            self._statements = {name: text.format(table=table) for name, text in statements.items()}

    @property
    def available(self) -> bool:
        """Whether the store has a datastore for this table (not in memory)."""
        return bool(self._statements)

    def execute(self, name: str, *params: str, fetch: str | bool = False) -> Any:
        """Runs statement ``name`` in a transaction of its own; ``fetch``: ``True`` for
        one row, ``"all"`` for every row."""
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=True) as cursor:
            cursor.execute(self._statements[name], params)
            if fetch == "all":
                return cursor.fetchall()
            return cursor.fetchone() if fetch else None
