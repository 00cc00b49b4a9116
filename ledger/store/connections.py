"""PostgreSQL connections of the ledger's own (beside the library's pool) and the set-up lock."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger.contract.errors import ConfigurationError, StoreNotFoundError, StoreUnavailableError
from ledger.contract.names import LEDGER_EVENTS_TABLE
from ledger.store.url import StoreConfig, library_number


@contextlib.contextmanager
def setup_lock(config: StoreConfig) -> Iterator[None]:
    """Serialises table set-up across processes (PostgreSQL advisory lock on the schema).

    The library creates its tables and functions whenever an application is
    constructed; PostgreSQL does not make concurrent ``CREATE ... IF NOT EXISTS``
    or ``CREATE OR REPLACE FUNCTION`` safe, so processes opening the same schema
    at the same moment take turns. A no-op on SQLite and in memory.
    """
    if not config.is_postgres:
        yield
        return
    key = "ledger-setup:" + config.env["POSTGRES_SCHEMA"]
    held: set[str] = _setup_locks.__dict__.setdefault("held", set())
    if key in held:  # Re-entrant within a thread (e.g. the views open the ledger).
        yield
        return
    held.add(key)
    try:
        with _locked(config, key):
            yield
    finally:
        held.discard(key)


_setup_locks = threading.local()


@contextlib.contextmanager
def _locked(config: StoreConfig, key: str) -> Iterator[None]:
    with connect(config) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def connect(config: StoreConfig, **options: Any) -> Any:
    """A psycopg connection (autocommit) to the PostgreSQL store of ``config``
    (``options``: more libpq parameters, e.g. ``application_name``).

    Like the library's pooled connections, it ends a transaction left idle for
    ``POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT`` seconds (the library's variable,
    default 5; 0 = never): an open transaction holds every follower back
    (:mod:`ledger.store.horizon`)."""
    import psycopg

    env = config.env
    idle = int(library_number("POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", 5) * 1000)
    options.setdefault("options", f"-c idle_in_transaction_session_timeout={idle}")
    try:
        return psycopg.connect(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"] or None,
            autocommit=True,
            connect_timeout=max(1, int(library_number("POSTGRES_CONNECT_TIMEOUT", 5))),
            **options,
        )
    except psycopg.OperationalError as e:
        raise StoreUnavailableError(f"cannot reach PostgreSQL at {config.redacted_url}: {e}") from e


def prepare_store(config: StoreConfig) -> None:
    """Makes room for a store that may not exist yet: the SQLite file's folder, or the
    PostgreSQL schema named in the URL (when this process creates tables)."""
    if config.is_sqlite:
        path = Path(config.env["SQLITE_DBNAME"])
        if str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigurationError(
                    f"LEDGER_URL {config.url!r}: cannot create the folder {str(path.parent)!r} "
                    f"({e.strerror or e})"
                ) from None
        return
    ensure_schema(config)


def check_store_exists(config: StoreConfig) -> None:
    """:class:`~ledger.contract.errors.StoreNotFoundError` unless a ledger was recorded
    at ``config`` (reads never create one)."""
    if config.is_sqlite:
        path = Path(config.env["SQLITE_DBNAME"])
        if str(path) == ":memory:" or path.is_file():
            return
    elif config.is_postgres:
        schema = config.env["POSTGRES_SCHEMA"]
        with connect(config) as conn:
            found = conn.execute(
                "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))",
                (schema, LEDGER_EVENTS_TABLE),
            ).fetchone()
        if found and found[0] is not None:
            return
    else:
        return
    raise StoreNotFoundError(
        f"no ledger at {config.redacted_url}: nothing has been recorded there yet "
        "(check LEDGER_URL; a write command or `ledger setup` creates it)"
    )


def ensure_schema(config: StoreConfig) -> None:
    """Creates the PostgreSQL schema named in the URL when it is missing."""
    if not config.is_postgres or not config.creates_tables:
        return
    import psycopg
    from psycopg import sql

    # A concurrent creator can win the race: UniqueViolation then means it exists.
    with connect(config) as conn, contextlib.suppress(psycopg.errors.UniqueViolation):
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(config.env["POSTGRES_SCHEMA"])
            )
        )
