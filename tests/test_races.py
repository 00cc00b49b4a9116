"""Racing writers in separate processes on PostgreSQL.

Each worker is a fresh interpreter (``spawn``) that opens its own ledger on the
same database schema, waits at a barrier so all of them start together, and
reports what happened through a queue. Nothing is shared but the database.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Lock
from typing import Any

import pytest

from ledger import (
    AgentExecutionStatus,
    Ledger,
    Phase,
    TerminalPhaseError,
    open_ledger,
)
from ledger.api.agentexecution.v1 import status_pb2 as agent_status
from ledger.domain.execution import Execution
from tests.support.builders import agent_execution

pytestmark = pytest.mark.postgres

WORKERS = 4
UPDATES_PER_WORKER = 60
COMPLETION_RACES = 20
CREATE_RACES = 10
OPENERS = 6
OPEN_ROUNDS = 4
BARRIER_TIMEOUT = 60.0
RESULT_TIMEOUT = 120.0

Result = tuple[int, str, Any]
"""(worker index, "ok" or "error", payload)."""


racer = partial(agent_execution, agent_id="agent-1", message="race", token=b"token")


# Workers (module level, so a spawned interpreter can import them).


def _run_worker(
    index: int,
    url: str,
    barrier: Barrier,
    lock: Lock,
    results: Queue[Result],
    body: Callable[[Ledger, int, Barrier], Any],
) -> None:
    """Opens a ledger, runs ``body`` and reports its result (or the traceback).

    Workers open their ledgers one at a time (``lock``): opening is raced on
    purpose by :func:`open_worker` only.
    """
    app: Ledger | None = None
    try:
        with lock:
            app = open_ledger(url)
        results.put((index, "ok", body(app, index, barrier)))
    except BaseException:
        barrier.abort()
        results.put((index, "error", traceback.format_exc()))
    finally:
        if app is not None:
            app.close()


def _append_messages(app: Ledger, index: int, barrier: Barrier, execution_id: str) -> int:
    barrier.wait(BARRIER_TIMEOUT)
    for n in range(UPDATES_PER_WORKER):
        app.update_status(
            execution_id,
            AgentExecutionStatus(messages=[agent_status.AgentMessage(content=f"w{index}-m{n}")]),
        )
    return UPDATES_PER_WORKER


def append_worker(
    index: int, url: str, barrier: Barrier, lock: Lock, results: Queue[Result], execution_id: str
) -> None:
    _run_worker(
        index,
        url,
        barrier,
        lock,
        results,
        lambda app, i, b: _append_messages(app, i, b, execution_id),
    )


def _finish_each(app: Ledger, index: int, barrier: Barrier, execution_ids: list[str]) -> list[str]:
    outcomes: list[str] = []
    for execution_id in execution_ids:
        barrier.wait(BARRIER_TIMEOUT)
        try:
            if index == 0:
                app.complete(execution_id, {"by": "completer"})
            else:
                app.fail(execution_id, "failed by the failer")
        except TerminalPhaseError as e:
            outcomes.append(f"terminal:{e.current}")
        else:
            outcomes.append("won")
    return outcomes


def finish_worker(
    index: int,
    url: str,
    barrier: Barrier,
    lock: Lock,
    results: Queue[Result],
    execution_ids: list[str],
) -> None:
    _run_worker(
        index,
        url,
        barrier,
        lock,
        results,
        lambda app, i, b: _finish_each(app, i, b, execution_ids),
    )


def _create_each(
    app: Ledger, index: int, barrier: Barrier, execution_ids: list[str]
) -> list[tuple[str, int]]:
    created: list[tuple[str, int]] = []
    for execution_id in execution_ids:
        barrier.wait(BARRIER_TIMEOUT)
        record = app.create(racer(execution_id))
        created.append((record.id, record.version))
    return created


def create_worker(
    index: int,
    url: str,
    barrier: Barrier,
    lock: Lock,
    results: Queue[Result],
    execution_ids: list[str],
) -> None:
    _run_worker(
        index,
        url,
        barrier,
        lock,
        results,
        lambda app, i, b: _create_each(app, i, b, execution_ids),
    )


def open_worker(
    index: int, url: str, barrier: Barrier, lock: Lock, results: Queue[Result], execution_id: str
) -> None:
    """Opens the ledger at the same moment as the others, creates, closes; a few times."""
    created: list[tuple[str, int]] = []
    try:
        for _ in range(OPEN_ROUNDS):
            barrier.wait(BARRIER_TIMEOUT)
            app = open_ledger(url)
            try:
                record = app.create(racer(execution_id))
                created.append((record.id, record.version))
            finally:
                app.close()
        results.put((index, "ok", created))
    except BaseException:
        barrier.abort()
        results.put((index, "error", traceback.format_exc()))


# The harness.


def race(target: Callable[..., None], count: int, url: str, *args: object) -> dict[int, Any]:
    """Runs ``count`` spawned workers on ``target``; returns each one's result by index."""
    ctx: SpawnContext = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(count)
    lock = ctx.Lock()
    results: Queue[Result] = ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(index, url, barrier, lock, results, *args), daemon=True)
        for index in range(count)
    ]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(count):
            index, kind, payload = results.get(timeout=RESULT_TIMEOUT)
            if kind == "error":
                errors.append(f"worker {index}:\n{payload}")
            else:
                collected[index] = payload
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert not errors, "\n".join(errors)
    assert sorted(collected) == list(range(count))
    return collected


def test_concurrent_status_updates_lose_nothing(pg_url: str) -> None:
    app = open_ledger(pg_url)
    try:
        execution_id = app.create(racer()).id
        results = race(append_worker, WORKERS, pg_url, execution_id)
        assert sum(results.values()) == WORKERS * UPDATES_PER_WORKER

        status = app.get(execution_id).status
        assert isinstance(status, AgentExecutionStatus)
        contents = [m.content for m in status.messages]
        assert len(contents) == WORKERS * UPDATES_PER_WORKER
        assert set(contents) == {
            f"w{w}-m{n}" for w in range(WORKERS) for n in range(UPDATES_PER_WORKER)
        }
        for w in range(WORKERS):  # each writer's messages keep their order
            mine = [c for c in contents if c.startswith(f"w{w}-")]
            assert mine == [f"w{w}-m{n}" for n in range(UPDATES_PER_WORKER)]
        history = app.history(execution_id)
        assert len(history) == 1 + WORKERS * UPDATES_PER_WORKER
        assert [h.version for h in history] == list(range(1, len(history) + 1))
    finally:
        app.close()


def test_racing_completions_exactly_one_wins(pg_url: str) -> None:
    app = open_ledger(pg_url)
    try:
        execution_ids = [app.create(racer()).id for _ in range(COMPLETION_RACES)]
        results = race(finish_worker, 2, pg_url, execution_ids)
        completer: list[str] = results[0]
        failer: list[str] = results[1]
        for n, execution_id in enumerate(execution_ids):
            outcomes = {completer[n], failer[n]}
            assert "won" in outcomes, f"{execution_id}: nobody won: {outcomes}"
            assert len(outcomes) == 2, f"{execution_id}: both won or both lost: {outcomes}"
            history = app.history(execution_id)
            assert [h.type for h in history].count("Completed") == 1
            assert [h.type for h in history] == ["Created", "Completed"]
            final = app.read(execution_id).phase
            if completer[n] == "won":
                assert final is Phase.COMPLETED
                assert failer[n] == "terminal:EXECUTION_COMPLETED"
            else:
                assert final is Phase.FAILED
                assert completer[n] == "terminal:EXECUTION_FAILED"
            completed = history[-1].event
            assert isinstance(completed, Execution.Completed)
            assert completed.phase == final
    finally:
        app.close()


def test_concurrent_creates_of_one_id_make_one_execution(pg_url: str) -> None:
    execution_ids = [f"aex-race-{n}" for n in range(CREATE_RACES)]
    app = open_ledger(pg_url)  # the tables exist before the race
    try:
        results = race(create_worker, WORKERS, pg_url, execution_ids)
        for worker in range(WORKERS):
            assert results[worker] == [(execution_id, 1) for execution_id in execution_ids]
        for execution_id in execution_ids:
            assert [h.type for h in app.history(execution_id)] == ["Created"]
        notifications = app.recorder.select_notifications(start=None, limit=1000)
        assert len(notifications) == CREATE_RACES
        assert {n.originator_id for n in notifications} == set(execution_ids)
    finally:
        app.close()


@pytest.mark.parametrize("tables", ["fresh schema", "tables exist"])
def test_processes_opening_the_ledger_together(pg_url: str, tables: str) -> None:
    """Several processes (dispatcher, CLI, workers...) open the ledger at one moment.

    Each runs the library's table set-up on open (``CREATE TABLE IF NOT EXISTS``,
    ``CREATE OR REPLACE FUNCTION``), which PostgreSQL does not make safe against a
    concurrent twin ("tuple concurrently updated", or a unique violation in
    ``pg_type``). Every process must still open the ledger and record.
    """
    if tables == "tables exist":
        open_ledger(pg_url).close()
    results = race(open_worker, OPENERS, pg_url, "aex-first-start")
    for created in results.values():
        assert created == [("aex-first-start", 1)] * OPEN_ROUNDS
    app = open_ledger(pg_url)
    try:
        assert [h.type for h in app.history("aex-first-start")] == ["Created"]
    finally:
        app.close()
