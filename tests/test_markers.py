"""Every test that needs PostgreSQL carries the ``postgres`` marker (``tests/conftest.py``'s
``pytest_collection_modifyitems``), so ``-m "not postgres"`` runs without a server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import needs_postgres
from tests.support.processes import ROOT

POSTGRES_PARAM = re.compile(r"\[(?:[^\]]*-)?postgres(?:-[^\]]*)?\]$")
"""A test id run with the ``postgres`` param of ``store_url`` (alone or among others)."""


def collect(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_not_postgres_deselects_every_test_that_needs_it() -> None:
    everything = collect("tests")
    without = collect("tests", "-m", "not postgres")
    with_postgres = collect("tests", "-m", "postgres")
    assert sorted(without + with_postgres) == sorted(everything)
    # Not one store_url test with the postgres param, nor a test using pg_url.
    assert [i for i in without if POSTGRES_PARAM.search(i)] == []
    assert "tests/test_roles.py::test_the_reader_reads_and_cannot_write" not in without
    # Their SQLite halves stay, and so do the tests needing no database server.
    sqlite_halves = [i for i in without if i.endswith("[sqlite]")]
    assert sqlite_halves, without[:20]
    postgres_halves = [i.replace("[sqlite]", "[postgres]") for i in sqlite_halves]
    assert any(i in with_postgres for i in postgres_halves), with_postgres[:20]
    assert "tests/test_cli.py::test_keygen_prints_a_usable_key" in without


def test_the_hook_reads_fixtures_and_the_store_url_param(
    request: pytest.FixtureRequest, store_url: str
) -> None:
    """This very test: marked on its ``postgres`` half only."""
    item = request.node
    marked = item.get_closest_marker("postgres") is not None
    assert marked == store_url.startswith("postgresql"), (item.nodeid, store_url)
    assert needs_postgres(item) == marked
