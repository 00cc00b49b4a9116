"""Writes ``postgres.sql``: a PostgreSQL store written by the round-2 code (table lock).

Run with the round-2 tree first on the path (main at 08f55c5, before the readable
head), e.g. ``cd <round-2 checkout> && PYTHONPATH=. <venv>/bin/python
<this file> <output.sql>``. It records a few executions (completed, failed, open),
brings the views up to date, records a dispatcher position, and dumps the schema
with ``pg_dump`` under the schema name ``round2_fixture_schema``.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg

from ledger import AgentExecution, AgentExecutionSpec, AgentExecutionStatus, Phase
from ledger.application import open_ledger_with
from ledger.store.url import parse_url
from projections.dispatch.log import DispatcherLog
from projections.views import Views

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = "round2_fixture_schema"


def main(output: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    config = parse_url(f"{SERVER}?schema={SCHEMA}")
    ledger = open_ledger_with(config)
    ids = []
    for n in range(6):
        record = ledger.create(
            AgentExecution(
                metadata={"id": f"aex-round2-{n}", "labels": {"fixture": "round2"}},  # type: ignore[arg-type]
                spec=AgentExecutionSpec(
                    agent_id=f"agent-{n}", message="round 2", callback_token=b"token-%d" % n
                ),
            )
        )
        ids.append(record.id)
        patch = AgentExecutionStatus(phase=Phase.IN_PROGRESS.value)  # type: ignore[arg-type]
        ledger.update_status(record.id, patch)
    ledger.complete(ids[0], {"answer": 42})
    ledger.fail(ids[1], "it broke", error_type="ToolError")
    ledger.cancel(ids[2], "asked to")
    with Views(config) as views:
        views.catch_up()
    head = ledger.recorder.max_notification_id() or 0
    log = DispatcherLog(config.component_env("dispatcher"))
    from eventsourcing.persistence import Tracking

    log.record([], Tracking(ledger.name, head))
    log.close()
    ledger.close()
    dump = subprocess.run(
        ["pg_dump", "--schema", SCHEMA, "--no-owner", "--no-privileges", SERVER],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with open(output, "w") as f:
        f.write(dump)
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


if __name__ == "__main__":
    main(sys.argv[1])
