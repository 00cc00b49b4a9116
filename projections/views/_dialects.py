"""The views store: one datastore of the library's, on PostgreSQL or SQLite, and a
recorder of the right dialect per view (:mod:`projections.views._postgres`,
:mod:`projections.views._sqlite`, both :class:`~projections.views._recorder.ViewRecorder`).

On PostgreSQL the views live in the ledger's schema; on SQLite in a file of their
own beside the ledger's (``ledger.views.db``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import Environment

from ledger.contract.errors import ConfigurationError
from projections.views._postgres import PostgresViewRecorder
from projections.views._recorder import (
    PositionMovedError,
    Tx,
    ViewRecorder,
    ViewSchema,
    as_utc,
)
from projections.views._sqlite import SQLiteViewRecorder

__all__ = [
    "PositionMovedError",
    "Tx",
    "ViewRecorder",
    "ViewSchema",
    "ViewStore",
    "as_utc",
]


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

    @property
    def may_create(self) -> bool:
        """False for a runtime role whose environment says it may not create tables."""
        return bool(getattr(self.factory, "env_create_table", lambda: True)())

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite views file (None on PostgreSQL)."""
        if isinstance(self.datastore, SQLiteDatastore):
            return Path(self.datastore.pool.db_name)
        return None

    def recorder(
        self,
        schema: ViewSchema,
        *,
        suffix: str = "",
        index_prefix: str = "",
        create: bool = True,
    ) -> ViewRecorder:
        """The recorder of one view, its tables created when missing (unless ``create``
        is False or the store's environment says a runtime role may not create tables).

        ``suffix`` names a second set of the view's tables (``view_status__next``...),
        whose indexes are named with ``index_prefix``: a rebuild's.
        """
        tables = {key: table + suffix for key, table in schema.tables.items()}
        tracking = schema.tracking_table_name + suffix
        recorder: ViewRecorder
        if isinstance(self.datastore, PostgresDatastore):
            recorder = PostgresViewRecorder(
                self.datastore,
                schema,
                tables=tables,
                tracking_table_name=tracking,
                index_prefix=index_prefix,
            )
        else:
            recorder = SQLiteViewRecorder(
                self.datastore,
                schema,
                tables=tables,
                tracking_table_name=tracking,
                index_prefix=index_prefix,
            )
        if create and self.may_create:
            recorder.create_tables()
        return recorder

    def close(self) -> None:
        """Closes the datastore (every recorder made here with it)."""
        self.factory.close()
