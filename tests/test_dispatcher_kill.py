"""The dispatcher killed (SIGKILL) in the middle of a stream of 500 completions.

500 activities wait for an execution each (10 workflows of 50 concurrent
activities, each activity with its own task token, on a worker in this
process). The dispatcher runs as a separate process (``python -m
projections.dispatcher``, configured by ``LEDGER_URL`` and ``TEMPORAL_ADDRESS``)
over PostgreSQL. While the completions are appended, it is killed with SIGKILL
once part of them is delivered, then started again. Every caller must complete,
exactly once in Temporal's own history, and every execution must have exactly
one final outcome in the dispatcher's log: ``Delivered``, or
``StaleAfterAttempt`` for a delivery whose call was in flight at the kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger.store.url import parse_url
from tests.support.builders import agent_execution
from tests.test_dispatcher_e2e import World, activity_events, run, world

pytestmark = [pytest.mark.slow, pytest.mark.temporal, pytest.mark.postgres]

WORKFLOWS = 10
PER_WORKFLOW = 50
TOTAL = WORKFLOWS * PER_WORKFLOW
KILL_AFTER = 120
"""Kill once this many deliveries are recorded (of 500)."""

FINAL = {"Delivered", "StaleAfterAttempt", "Stale", "Rejected", "NoCallback", "Parked"}


def start_dispatcher(url: str, address: str, log_file: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, LEDGER_URL=url, TEMPORAL_ADDRESS=address, PYTHONUNBUFFERED="1")
    env.pop("LEDGER_CIPHER_KEY", None)
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", "dispatcher", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )


def outcome_counts(url: str) -> Counter[str]:
    """Events of the dispatcher's log by type, straight from its table."""
    env = parse_url(url).env
    with psycopg.connect(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
    ) as conn:
        try:
            rows = conn.execute(
                sql.SQL("SELECT topic, count(*) FROM {}.dispatcher_events GROUP BY topic").format(
                    sql.Identifier(env["POSTGRES_SCHEMA"])
                )
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return Counter()
    return Counter({str(topic).rpartition(".")[2]: int(n) for topic, n in rows})


def test_dispatcher_killed_mid_stream_and_restarted(
    pg_url: str, temporal_address: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "dispatcher.log"
    processes: list[subprocess.Popen[bytes]] = []

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            handles = [
                await w.client.start_workflow(
                    "ManyAgentExecutions",
                    args=[
                        agent_execution(agent_id="a", message="m"),
                        PER_WORKFLOW,
                    ],
                    id=f"wf-{uuid.uuid4().hex}",
                    task_queue=w.task_queue,
                    result_type=list[str],
                )
                for _ in range(WORKFLOWS)
            ]
            execution_ids = await recorded_executions(w)

            processes.append(start_dispatcher(pg_url, temporal_address, log_file))
            stream = asyncio.create_task(asyncio.to_thread(complete_all, w, execution_ids))

            # Kill once part of the stream is delivered, while completions still arrive,
            # preferably with attempts recorded and their outcomes not yet.
            deadline = time.monotonic() + 40
            while True:
                counts = outcome_counts(pg_url)
                delivered = counts["Delivered"]
                if delivered >= KILL_AFTER and (
                    counts["Attempted"] > delivered or delivered >= 2 * KILL_AFTER
                ):
                    break
                assert processes[0].poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "the dispatcher delivered too little"
                await asyncio.sleep(0.005)
            processes[0].send_signal(signal.SIGKILL)
            assert processes[0].wait(10) == -signal.SIGKILL
            killed_at = outcome_counts(pg_url)
            assert delivered < TOTAL, "killed too late: everything was delivered already"

            processes.append(start_dispatcher(pg_url, temporal_address, log_file))
            await stream
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=60
            )
            processes[1].send_signal(signal.SIGTERM)
            assert processes[1].wait(15) == 0, log_file.read_text()[-3000:]

            # Every caller completed, with its own execution, exactly once in Temporal.
            received = [i for ids in results for i in ids]
            assert len(received) == TOTAL
            assert set(received) == set(execution_ids)
            for handle in handles:
                events = await activity_events(handle)
                assert events["COMPLETED"] == PER_WORKFLOW
                assert events["FAILED"] == events["TIMED_OUT"] == events["CANCELED"] == 0

            # Exactly one final outcome per execution in the dispatcher's log.
            log = w.log()
            in_flight_at_kill = 0
            for execution_id in execution_ids:
                names = [type(e).__name__ for e in log.events.get(execution_id)]
                finals = [n for n in names if n in FINAL]
                assert finals in (["Delivered"], ["StaleAfterAttempt"]), (execution_id, names)
                if finals == ["StaleAfterAttempt"]:
                    # Only a delivery whose call was cut off by the kill.
                    assert names.count("Attempted") == 2, names
                    in_flight_at_kill += 1
                elif names.count("Attempted") == 2:
                    in_flight_at_kill += 1
            # Exactly the deliveries attempted without an outcome at the kill were attempted
            # again after the restart (and only those can be stale_after_attempt).
            assert in_flight_at_kill == killed_at["Attempted"] - killed_at["Delivered"]
            after = outcome_counts(pg_url)
            assert after["Delivered"] + after["StaleAfterAttempt"] == TOTAL
            assert after["Delivered"] > killed_at["Delivered"]  # The restart delivered the rest.
            assert log.position() == w.ledger.recorder.max_notification_id()
            print(
                f"attempted before the kill: {killed_at['Attempted']}, "
                f"delivered before the kill: {killed_at['Delivered']}, "
                f"in flight at the kill: {in_flight_at_kill}, "
                f"stale_after_attempt: {after['StaleAfterAttempt']}"
            )

    try:
        run(scenario())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


async def recorded_executions(w: World) -> list[str]:
    """Waits until all 500 activities have recorded their execution; returns the ids."""
    deadline = time.monotonic() + 30
    while True:
        notifications = await asyncio.to_thread(
            w.ledger.recorder.select_notifications, 1, 10 * TOTAL
        )
        created = [str(n.originator_id) for n in notifications if n.topic.endswith("Created")]
        if len(created) >= TOTAL:
            assert len(created) == TOTAL
            return created
        assert time.monotonic() < deadline, f"only {len(created)} executions recorded"
        await asyncio.sleep(0.1)


def complete_all(w: World, execution_ids: list[str]) -> None:
    """The stream: every execution completes, one after the other."""
    for n, execution_id in enumerate(execution_ids):
        w.ledger.complete(execution_id, {"n": n})
