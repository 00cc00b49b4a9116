"""Upgrading a PostgreSQL store written by round 2 (a table lock per insert) with ``ledger setup``.

``tests/data/round2/postgres.sql`` is a ``pg_dump`` of a store written by the
round-2 code (``tests/data/round2/make_fixture.py``): six executions (completed,
failed, cancelled, open), the views caught up, a dispatcher position. Positions
keep their meaning (notification ids, see ``ledger.store.horizon``), so the upgrade
only replaces the insert functions; this test loads the dump into a fresh schema,
runs the documented command, and checks that everything written before reads the
same, that the functions no longer lock, and that the views carry on from their
positions with the new writes, each applied once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger.application import open_ledger
from ledger.contract.phases import Phase
from ledger.store.url import parse_url
from projections.dispatch.log import DispatcherLog
from projections.views import Views
from tests.support.builders import agent_execution
from tests.support.servers import POSTGRES_URL, drop_schema
from tests.test_recorder import new_schema, require_postgres

pytestmark = pytest.mark.postgres

FIXTURE = Path(__file__).parent / "data" / "round2" / "postgres.sql"
FIXTURE_SCHEMA = "round2_fixture_schema"
LEDGER = str(Path(sys.executable).parent / "ledger")


@pytest.fixture
def round2_url() -> Iterator[str]:
    """A fresh schema holding the round-2 store, as a LEDGER_URL."""
    require_postgres()
    schema = new_schema()
    drop_schema(POSTGRES_URL, schema)  # The dump creates it.
    dump = FIXTURE.read_text().replace(FIXTURE_SCHEMA, schema)
    try:
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", POSTGRES_URL, "-f", "-"],
            input=dump,
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        drop_schema(POSTGRES_URL, schema)


def cli(url: str, *args: str) -> Any:
    result = subprocess.run(
        [LEDGER, *args, "--json"],
        env={**os.environ, "LEDGER_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout) if result.stdout.strip() else None


def function_sources(url: str) -> dict[str, str]:
    schema = parse_url(url).env["POSTGRES_SCHEMA"]
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {name: source for name, source in rows}


def test_ledger_setup_upgrades_a_round2_store(round2_url: str) -> None:
    before = function_sources(round2_url)
    inserts = [name for name in before if name.endswith(("_insert", "_insert1", "_tracked"))]
    assert len(inserts) == 5, sorted(before)
    assert all("LOCK TABLE" in before[name] for name in inserts)  # Really round 2's.

    subprocess.run(
        [LEDGER, "setup"],
        env={**os.environ, "LEDGER_URL": round2_url},
        check=True,
        capture_output=True,
        timeout=300,
    )

    after = function_sources(round2_url)
    assert sorted(after) == sorted(before)  # Replaced in place: grants stay.
    for name in inserts:
        assert "LOCK TABLE" not in after[name] and "NOTIFY" not in after[name], name
        assert "pg_current_xact_id()" in after[name], name

    # What round 2 wrote reads the same.
    ledger = open_ledger(round2_url)
    try:
        assert ledger.get("aex-round2-0").status.phase == Phase.COMPLETED.value
        assert ledger.get("aex-round2-1").status.phase == Phase.FAILED.value
        assert ledger.get("aex-round2-2").status.phase == Phase.CANCELLED.value
        assert ledger.get("aex-round2-5").status.phase == Phase.IN_PROGRESS.value
        old_head = ledger.recorder.max_notification_id()
        assert old_head == 15, old_head  # 6 x (created, in progress) + 3 completions.
        lags = {row["name"]: row for row in cli(round2_url, "projections", "status")}
        assert lags["audit<-Ledger"]["position"] == old_head
        assert lags["audit<-Ledger"]["lag"] == 0
        assert lags["dispatcher<-Ledger"]["position"] == old_head
        # The status view's tables changed shape since round 2 (schema 2,
        # docs/READ_MODELS.md): rebuilt as documented, from the log.
        cli(round2_url, "projections", "rebuild", "status")
        lags = {row["name"]: row for row in cli(round2_url, "projections", "status")}
        assert lags["status<-Ledger"]["position"] == old_head
        assert lags["status<-Ledger"]["lag"] == 0

        # New writes through the new functions; the views go on from their positions.
        new_ids = []
        for n in range(5):
            record = ledger.create(agent_execution(f"aex-round3-{n}"))
            ledger.complete(record.id, {"n": n})
            new_ids.append(record.id)
    finally:
        ledger.close()
    config = parse_url(round2_url)
    with Views(config) as views:
        views.catch_up()
        lags = {lag.name: lag for lag in views.lag()}
    assert lags["status<-Ledger"].lag == 0 and lags["status<-Ledger"].position == old_head + 10
    document = cli(round2_url, "list")
    assert document["next"] is None, document
    listed = document["executions"]
    ids = [row["id"] for row in listed]
    assert sorted(ids) == sorted(set(ids))  # Each once.
    assert {f"aex-round2-{n}" for n in range(6)} | set(new_ids) == set(ids)
    completed = [row for row in listed if row["phase"] == "EXECUTION_COMPLETED"]
    assert len(completed) == 6, completed
    log = DispatcherLog(config.component_env("dispatcher"))
    try:
        assert log.position() == old_head  # The dispatcher's own position is untouched.
    finally:
        log.close()
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(config.env["POSTGRES_SCHEMA"], "view_status")
            )
        ).fetchone()
    assert rows is not None and rows[0] == 11
