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


TOTAL = re.compile(r"^(\d+)/(\d+) tests? collected \((\d+) deselected\)", re.MULTILINE)
"""The summary line of a collection narrowed by ``-m``: selected/collected (deselected)."""


def collect(*expressions: str) -> list[tuple[list[str], int]]:
    """The test ids each ``-m expression`` selects, with the number of tests collected
    before the selection (the whole suite): one collection per expression, run side
    by side."""
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                *("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"),
                *("tests", "-m", expression),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for expression in expressions
    ]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
        total = TOTAL.search(stdout)
        assert total is not None, stdout[-3000:]
        selected = [line for line in stdout.splitlines() if "::" in line]
        assert len(selected) == int(total[1]), (len(selected), total[0])
        assert int(total[1]) + int(total[3]) == int(total[2]), total[0]
        results.append((selected, int(total[2])))
    return results


def test_not_postgres_deselects_every_test_that_needs_it() -> None:
    (without, everything), (with_postgres, also_everything) = collect("not postgres", "postgres")
    # Together they are the whole suite, each test once: no id in both, none twice,
    # and as many as were collected (each run lists only ids it collected).
    assert everything == also_everything
    assert len(set(without)) == len(without) and len(set(with_postgres)) == len(with_postgres)
    assert not set(without) & set(with_postgres)
    assert len(without) + len(with_postgres) == everything
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
