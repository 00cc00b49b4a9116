"""Faults, with real processes and servers: PostgreSQL and Temporal going away mid-stream.

PostgreSQL is shared with other test runs on this machine, so it is never
stopped: an "outage" here is what a restart looks like to a client. Every
backend of the processes under test is terminated with ``pg_terminate_backend``
(found by the ``application_name`` each process is started with, ``PGAPPNAME``)
and, for as long as the outage lasts, new connections are refused by a TCP
proxy (:class:`~tests.support.servers.PgProxy`) the processes reach PostgreSQL
through. The same proxy drops NOTIFY messages (a lost notification) and cuts a
connection between the server's COMMIT and its acknowledgement.

Temporal: a dedicated dev server (``temporal server start-dev``) on a fixed port
with its state in a file, SIGKILLed and started again on the same port and file.

1. Commands appended during a PostgreSQL outage succeed or fail with
   :class:`~ledger.contract.errors.StoreUnavailableError`, write nothing half-way, and the
   writer carries on by itself; the dispatcher following meanwhile carries on by
   itself and delivers every completion exactly once (counted in Temporal).
   Two narrower cases: a COMMIT whose acknowledgement is lost (the command must
   count once and be reported done), and a failed write of a batch of outcomes
   (the dispatcher must keep recording).
2. The LISTEN connection of a following dispatcher or subscription is
   terminated: new events still arrive within seconds (with a 30 s poll, so it is
   the LISTEN reconnect that is proven); a lost notification is covered by polling.
3. The Temporal server killed and restarted mid-stream: nothing lost, nothing
   completed twice.
4. The dispatcher started before Temporal is reachable: it waits with backoff,
   says so, does not exit, and delivers once Temporal is there.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from eventsourcing.persistence import OperationalError, Tracking
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RetryConfig

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.application import Ledger, open_ledger
from ledger.contract.errors import StoreUnavailableError
from ledger.contract.kinds import AgentExecutionStatus
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from projections.dispatch.calls import RetryPolicy
from projections.dispatch.delivery import Outcome
from projections.subscription import PollingSubscription
from tests.conftest import temporal_cli
from tests.support.builders import agent_execution
from tests.support.processes import (
    check_alive,
    kill_all,
    start_dispatcher,
    start_lifecycles_writer,
    stop_process,
)
from tests.support.servers import (
    PLAIN_PG_ENV,
    PgProxy,
    TemporalDevServer,
    backends,
    proxied_url,
    terminate_backends,
)
from tests.support.waiting import wait_for
from tests.support.writer import check_lifecycle, read_results, writer_executions
from tests.test_dispatcher_e2e import World, activity_events, world
from tests.test_dispatcher_kill import outcome_counts

pytestmark = pytest.mark.postgres

T = TypeVar("T")

FINAL = {"Delivered", "StaleAfterAttempt", "Stale", "Rejected", "NoCallback", "Parked"}


def run(coro: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def app_name(role: str) -> str:
    """A unique ``application_name``: this test's backends, and only them."""
    return f"fault-{role}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_proxy(postgres_server: str) -> Iterator[PgProxy]:
    proxy = PgProxy()
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def temporal_server(tmp_path: Path) -> Iterator[TemporalDevServer]:
    """A dev server of this test's own, killable, its state in a file."""
    server = TemporalDevServer(temporal_cli(), tmp_path / "temporal.db", tmp_path / "temporal.log")
    server.start()
    yield server
    server.stop()


async def start_many(w: World, count: int) -> tuple[WorkflowHandle[Any, list[str]], list[str]]:
    """A workflow awaiting ``count`` executions; waits until all are recorded."""
    handle = await w.client.start_workflow(
        "ManyAgentExecutions",
        args=[agent_execution(agent_id="a", message="m"), count],
        id=f"wf-{uuid.uuid4().hex}",
        task_queue=w.task_queue,
        result_type=list[str],
    )
    created: list[str] = []

    def recorded() -> bool:
        notifications = w.ledger.recorder.select_notifications(1, 100 * count)
        created[:] = [str(n.originator_id) for n in notifications if n.topic.endswith("Created")]
        return len(created) >= count

    await asyncio.to_thread(
        wait_for,
        recorded,
        timeout=60,
        message=lambda: f"{count} executions recorded (only {len(created)})",
    )
    assert len(created) == count
    return handle, created


async def check_completed_once(
    handle: WorkflowHandle[Any, list[str]], execution_ids: list[str], timeout: float = 60
) -> None:
    """Temporal's side: the caller got every execution, each activity completed once."""
    received = await asyncio.wait_for(handle.result(), timeout)
    assert sorted(received) == sorted(execution_ids)
    events = await activity_events(handle)
    assert events["COMPLETED"] == len(execution_ids), events
    assert events["FAILED"] == events["TIMED_OUT"] == events["CANCELED"] == 0, events


def finals_by_execution(w: World, execution_ids: list[str]) -> dict[str, list[str]]:
    """Each execution's outcome events in the dispatcher's log."""
    log = w.log()
    return {
        i: [type(e).__name__ for e in log.events.get(i) if type(e).__name__ in FINAL]
        for i in execution_ids
    }


# 1. PostgreSQL outage while commands are appended and while the dispatcher follows.

CONNECT_TIMEOUT = "1"
"""``POSTGRES_CONNECT_TIMEOUT`` of the processes under test: the library retries a
statement 10 times, each waiting this long for a connection, so an outage of
several seconds outlasts its retries and reaches the caller."""


@pytest.mark.slow
def test_writer_during_a_postgres_outage_fails_cleanly_and_carries_on(
    postgres_server: str, pg_url: str, pg_proxy: PgProxy, tmp_path: Path
) -> None:
    name = app_name("writer")
    writer, results_file, stop = start_lifecycles_writer(
        proxied_url(pg_url, pg_proxy.port),
        name,
        tmp_path,
        POSTGRES_CONNECT_TIMEOUT=CONNECT_TIMEOUT,
        **PLAIN_PG_ENV,
    )
    log = tmp_path / f"{name}.log"

    def finished(since: float = 0.0) -> int:
        return sum(
            1 for r in read_results(results_file) if r.step == "finish" and r.ok and r.at > since
        )

    try:
        wait_for(lambda: finished() >= 10, timeout=60, message="the writer's first lifecycles")
        check_alive(writer, log)

        # The outage: the writer's backends terminated, new connections refused.
        outage_started = time.time()
        pg_proxy.refuse()
        terminated = terminate_backends(postgres_server, name)
        assert terminated, "the writer had no backend to terminate"

        def failed_during_outage() -> bool:
            return any(not r.ok and r.at > outage_started for r in read_results(results_file))

        wait_for(failed_during_outage, timeout=60, message="a command to hit the outage")
        time.sleep(0.5)
        pg_proxy.start()
        outage_ended = time.time()
        assert outage_ended - outage_started > 2

        # The same process carries on by itself.
        wait_for(
            lambda: finished(outage_ended) >= 10, timeout=60, message="lifecycles after the outage"
        )
        check_alive(writer, log)
        assert all(pid not in terminated for pid, _ in backends(postgres_server, name))
    finally:
        stop.touch()
        assert stop_process(writer) == 0, log.read_text()[-3000:]

    results = read_results(results_file)
    errors = [r for r in results if not r.ok]
    assert errors, "no command hit the outage"
    for error in errors:
        assert error.error == "ledger.contract.errors.StoreUnavailableError", error
        assert "unavailable" in error.message, error
        assert outage_started < error.at < outage_ended + 1, error
    # Every lifecycle the writer ran is in the store whole, each command once.
    lifecycles = {r.execution_id: r.lifecycle for r in results if r.lifecycle >= 0}
    ledger = open_ledger(pg_url)
    try:
        assert set(writer_executions(ledger)) == set(lifecycles)
        for execution_id, n in lifecycles.items():
            assert check_lifecycle(ledger.history(execution_id), n) == 3, execution_id
    finally:
        ledger.close()
    print(
        f"{len(lifecycles)} lifecycles, {len(errors)} StoreUnavailableError during the "
        f"{outage_ended - outage_started:.1f}s outage, {len(terminated)} backends terminated"
    )


@pytest.mark.slow
@pytest.mark.temporal
@pytest.mark.parametrize("outage", ["within_retries", "beyond_retries"])
def test_dispatcher_following_through_a_postgres_outage_delivers_each_completion_once(
    postgres_server: str,
    pg_url: str,
    pg_proxy: PgProxy,
    temporal_address: str,
    tmp_path: Path,
    outage: str,
) -> None:
    """The writer completes 30 awaited executions one by one while the dispatcher
    follows; both lose PostgreSQL in the middle. ``within_retries``: a 3 s outage,
    which the library's statement retries (30 s connection timeout) absorb.
    ``beyond_retries``: connection timeout 1 s and an outage that outlasts the
    retries, so the store errors reach the dispatcher's own code."""
    count = 30
    proxied = proxied_url(pg_url, pg_proxy.port)
    dispatcher_name, writer_name = app_name("dispatcher"), app_name("writer")
    env = dict(PLAIN_PG_ENV)
    if outage == "beyond_retries":
        env["POSTGRES_CONNECT_TIMEOUT"] = CONNECT_TIMEOUT
    dispatcher_log = tmp_path / "dispatcher.log"
    processes: list[subprocess.Popen[bytes]] = []

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            handle, execution_ids = await start_many(w, count)
            ids_file = tmp_path / "ids.txt"
            ids_file.write_text("\n".join(execution_ids))
            go = tmp_path / "writer.go"  # Held after 10 (so alive at the outage) until then.
            dispatcher = start_dispatcher(
                proxied, temporal_address, dispatcher_log, PGAPPNAME=dispatcher_name, **env
            )
            processes.append(dispatcher)
            writer, results_file, _ = start_lifecycles_writer(
                proxied,
                writer_name,
                tmp_path,
                "--complete",
                str(ids_file),
                "--pause",
                "0.1",
                "--hold-after",
                "10",
                "--go-file",
                str(go),
                **env,
            )
            processes.append(writer)

            await asyncio.to_thread(
                wait_for,
                lambda: outcome_counts(pg_url)["Delivered"] >= 6,
                timeout=60,
                message="deliveries before the outage",
            )
            check_alive(dispatcher, dispatcher_log)
            delivered_before = outcome_counts(pg_url)["Delivered"]
            assert delivered_before < count, "the outage came too late"

            outage_started = time.time()
            pg_proxy.refuse()
            for name in (dispatcher_name, writer_name):
                assert terminate_backends(postgres_server, name), f"no backend of {name}"
            go.touch()  # The writer's other 20 completions meet the outage.
            if outage == "within_retries":
                await asyncio.sleep(3)
            else:
                await asyncio.to_thread(
                    wait_for,
                    lambda: any(not r.ok for r in read_results(results_file)),
                    timeout=60,
                    message="the writer's retries to run out",
                )
                await asyncio.sleep(3)  # The dispatcher's retries have run out too.
            pg_proxy.start()
            outage_seconds = time.time() - outage_started

            # Both carry on by themselves: every caller gets its execution, once.
            results = asyncio.create_task(check_completed_once(handle, execution_ids, 60))
            while not results.done():
                check_alive(dispatcher, dispatcher_log)
                await asyncio.sleep(0.2)
            await results
            assert writer.wait(30) == 0
            check_alive(dispatcher, dispatcher_log)
            log = w.log()
            await asyncio.to_thread(
                wait_for,
                lambda: log.position() == w.ledger.recorder.max_notification_id(),
                timeout=60,
                message="the dispatcher's position to reach the head",
            )
            assert stop_process(dispatcher) == 0, dispatcher_log.read_text()[-3000:]

            finals = finals_by_execution(w, execution_ids)
            assert all(f == ["Delivered"] for f in finals.values()), finals
            writer_errors = [r for r in read_results(results_file) if not r.ok]
            for error in writer_errors:
                assert error.error == "ledger.contract.errors.StoreUnavailableError", error
            if outage == "beyond_retries":
                assert writer_errors, "the outage did not outlast the retries"
            print(
                f"outage {outage_seconds:.1f}s after {delivered_before} of {count} deliveries; "
                f"writer errors: {len(writer_errors)}"
            )

    try:
        run(scenario(), 300)
    finally:
        kill_all(processes)


@pytest.mark.temporal
def test_a_store_error_while_recording_outcomes_does_not_stop_the_recording(
    pg_url: str, temporal_address: str
) -> None:
    """Targeted (in-process): the write of one batch of outcomes fails as a store
    outage beyond the library's retries makes it fail. The dispatcher must keep
    those outcomes and record them, and the later ones, once the store answers,
    while it runs; not lose them and stop recording until it is stopped."""

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            first, second = [await w.start_agent() for _ in range(2)]
            dispatcher = w.dispatcher(poll_interval=0.1)
            record = dispatcher.log.record
            failed: list[int] = []

            def record_failing_once(items: Any, tracking: Tracking | None = None) -> None:
                if tracking is not None and not failed:
                    failed.append(tracking.notification_id)
                    raise OperationalError("couldn't get a connection after 1.00 sec")
                record(items, tracking)

            dispatcher.log.record = record_failing_once  # type: ignore[method-assign]
            running = asyncio.create_task(dispatcher.run())
            log = w.log()
            for caller in (first, second):
                await asyncio.to_thread(w.ledger.complete, caller.execution_id)
                await asyncio.wait_for(caller.handle.result(), 10)

                def delivered(c: Any = caller) -> bool:
                    outcome = getattr(log.delivery(c.execution_id), "outcome", None)
                    return outcome is Outcome.DELIVERED

                await asyncio.to_thread(
                    wait_for,
                    delivered,
                    timeout=60,
                    message=f"the outcome of {caller.execution_id} to be recorded",
                )
            assert failed, "no outcome write failed"
            assert log.position() == w.ledger.recorder.max_notification_id()
            assert not running.done()
            dispatcher.stop()
            stats = await asyncio.wait_for(running, 10)
            assert stats.outcomes == {"delivered": 2}

    run(scenario())


@pytest.mark.parametrize("command", ["update_status", "complete"])
def test_a_lost_commit_acknowledgement_is_not_applied_twice_or_misreported(
    pg_url: str, pg_proxy: PgProxy, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The connection drops after PostgreSQL committed a command's events and before
    the client heard so (a restart or a network cut at that moment). The library
    retries the insert, which then conflicts with the command's own events. The
    command must be reported as done, and recorded once: not re-applied on top of
    itself (a status patch twice), not refused as if someone else had completed it."""
    for key, value in PLAIN_PG_ENV.items():
        monkeypatch.setenv(key, value)
    ledger = open_ledger(proxied_url(pg_url, pg_proxy.port))
    try:
        execution_id = ledger.create(agent_execution()).id
        pg_proxy.cut_next_commit()
        try:
            if command == "update_status":
                record = ledger.update_status(
                    execution_id,
                    AgentExecutionStatus(
                        phase=Phase.IN_PROGRESS,  # type: ignore[arg-type]
                        messages=[AgentMessage(type=MESSAGE_AI, content="once")],
                    ),
                )
            else:
                record = ledger.complete(execution_id, {"n": 1})
        except StoreUnavailableError:
            record = None  # Acceptable had nothing been written; checked below.
        assert pg_proxy.commits_cut == 1, "the acknowledgement was not cut"
        history = ledger.history(execution_id)
        types = [h.type for h in history]
        if command == "update_status":
            assert types == ["Created", "StatusChanged"], types
            event = history[1].event
            assert isinstance(event, Execution.StatusChanged)
            assert [m.content for m in event.patch.messages] == ["once"]  # type: ignore[attr-defined]
        else:
            assert types == ["Created", "Completed"], types
        assert record is not None, "the command was written, but reported as not written"
        assert record.version == len(history)
    finally:
        ledger.close()


# 2. The LISTEN connection terminated; a lost notification.


def listen_backends(postgres_server: str, name: str) -> list[int]:
    """The pids of the LISTEN connections among this test's backends."""
    return [pid for pid, query in backends(postgres_server, name) if query.startswith("LISTEN")]


def kill_listen_and_await_a_new_one(postgres_server: str, name: str) -> tuple[int, int]:
    """Terminates the one LISTEN backend; returns (its pid, the pid of its replacement)."""
    (old,) = listen_backends(postgres_server, name)
    assert terminate_backends(postgres_server, name, query_prefix="LISTEN") == [old]
    wait_for(
        lambda: len(pids := listen_backends(postgres_server, name)) == 1 and pids[0] != old,
        timeout=60,
        message="a new LISTEN connection",
    )
    (new,) = listen_backends(postgres_server, name)
    return old, new


@pytest.mark.slow
@pytest.mark.temporal
def test_dispatcher_listen_connection_terminated_still_wakes_it(
    postgres_server: str, pg_url: str, temporal_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll interval 30 s: each completion arriving within 2 s was announced by LISTEN,
    through the connection that replaced the terminated one."""
    name = app_name("listen")
    monkeypatch.setenv("PGAPPNAME", name)  # Every connection of this process: this test's.

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            callers = [await w.start_agent() for _ in range(3)]
            dispatcher = w.dispatcher(poll_interval=30.0)
            running = asyncio.create_task(dispatcher.run())
            await asyncio.to_thread(
                wait_for,
                lambda: len(listen_backends(postgres_server, name)) == 1,
                timeout=60,
                message="the dispatcher's LISTEN connection",
            )
            latencies = []
            for n, caller in enumerate(callers):
                if n:  # The first one proves LISTEN works at all; then it is cut each time.
                    old, new = await asyncio.to_thread(
                        kill_listen_and_await_a_new_one, postgres_server, name
                    )
                    assert new != old
                    await asyncio.sleep(1)  # Past the wake-up the listener gives on losing it.
                started = time.monotonic()
                await asyncio.to_thread(w.ledger.complete, caller.execution_id)
                await asyncio.wait_for(caller.handle.result(), 10)
                latencies.append(time.monotonic() - started)
            assert not running.done()
            assert max(latencies) < 2.0, latencies
            dispatcher.stop()
            stats = await asyncio.wait_for(running, 35)
            assert stats.outcomes == {"delivered": 3}
            for caller in callers:
                assert (await activity_events(caller.handle))["COMPLETED"] == 1

    run(scenario())


def follow(subscription: PollingSubscription, arrivals: dict[str, float]) -> None:
    """Consumes ``subscription`` (in a thread), noting when each execution's event arrived."""
    for notification in subscription:
        arrivals[str(notification.originator_id)] = time.monotonic()


def append_and_time(ledger: Ledger, arrivals: dict[str, float], timeout: float) -> float:
    """Creates an execution; returns how long it took to reach the follower."""
    started = time.monotonic()
    execution_id = ledger.create(agent_execution()).id
    wait_for(
        lambda: execution_id in arrivals,
        timeout=timeout,
        message=f"{execution_id} to reach the follower",
    )
    return arrivals[execution_id] - started


@pytest.mark.slow
def test_subscription_listen_connection_terminated_still_wakes_it(
    postgres_server: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare :class:`PollingSubscription` polling every 30 s: its LISTEN connection
    is terminated three times, and each new event still arrives within 2 s."""
    name = app_name("listen")
    monkeypatch.setenv("PGAPPNAME", name)  # Only the follower LISTENs among them.
    writer = open_ledger(pg_url)
    follower = open_ledger(pg_url)
    arrivals: dict[str, float] = {}
    try:
        with PollingSubscription(follower.recorder, gt=0, poll_interval=30.0) as subscription:
            consumer = threading.Thread(target=follow, args=(subscription, arrivals), daemon=True)
            consumer.start()
            wait_for(
                lambda: len(listen_backends(postgres_server, name)) == 1,
                timeout=60,
                message="the LISTEN connection",
            )
            latencies = [append_and_time(writer, arrivals, 30)]
            for _ in range(3):
                kill_listen_and_await_a_new_one(postgres_server, name)
                time.sleep(1)  # Past the wake-up the listener gives on losing it.
                latencies.append(append_and_time(writer, arrivals, 30))
            assert max(latencies) < 2.0, latencies
            assert consumer.is_alive()
        consumer.join(5)
        assert not consumer.is_alive()
    finally:
        follower.close()
        writer.close()


@pytest.mark.slow
def test_a_lost_notification_is_covered_by_polling(
    pg_url: str, pg_proxy: PgProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every NOTIFY to the follower is dropped on the wire: only polling (1 s) finds
    the new events, and it does, within a poll interval or so."""
    writer = open_ledger(pg_url)
    for key, value in PLAIN_PG_ENV.items():
        monkeypatch.setenv(key, value)
    follower = open_ledger(proxied_url(pg_url, pg_proxy.port))
    arrivals: dict[str, float] = {}
    try:
        with PollingSubscription(follower.recorder, gt=0, poll_interval=1.0) as subscription:
            consumer = threading.Thread(target=follow, args=(subscription, arrivals), daemon=True)
            consumer.start()
            time.sleep(0.5)
            pg_proxy.drop_notifications = True
            dropped = pg_proxy.notifications_dropped
            latencies = [append_and_time(writer, arrivals, 30) for _ in range(3)]
            assert pg_proxy.notifications_dropped >= dropped + 3, "notifications not dropped"
            assert max(latencies) < 2.5, latencies
        consumer.join(5)
    finally:
        follower.close()
        writer.close()


# 3. The Temporal server killed and restarted mid-stream.


@pytest.mark.slow
@pytest.mark.temporal
@pytest.mark.parametrize("retries", ["outlast_the_outage", "parked_then_retried"])
def test_temporal_killed_and_restarted_mid_stream(
    pg_url: str, temporal_server: TemporalDevServer, retries: str
) -> None:
    """40 awaited executions complete one by one while the dispatcher follows; the
    Temporal server is SIGKILLed after some deliveries, completions keep coming
    while it is down, then it starts again on the same port and state file.

    ``outlast_the_outage``: the client's and the dispatcher's retries bridge the
    outage. ``parked_then_retried``: retries too short for it, the completions
    are parked, and ``retry_parked`` delivers them once Temporal is back."""
    count = 40

    async def scenario() -> None:
        async with world(pg_url, temporal_server.address) as w:
            handle, execution_ids = await start_many(w, count)
            if retries == "outlast_the_outage":
                dispatcher = w.dispatcher(poll_interval=0.1)
            else:
                client = await Client.connect(
                    temporal_server.address,
                    retry_config=RetryConfig(
                        initial_interval_millis=20, max_interval_millis=50, max_retries=1
                    ),
                )
                dispatcher = w.dispatcher(
                    client,
                    poll_interval=0.1,
                    retry=RetryPolicy(
                        max_tries=2,
                        initial_backoff=0.05,
                        max_backoff=0.1,
                        rpc_timeout=timedelta(seconds=2),
                    ),
                )
            running = asyncio.create_task(dispatcher.run())
            appended: list[float] = []
            completing = asyncio.create_task(
                asyncio.to_thread(complete_slowly, w.ledger, execution_ids, 0.15, appended)
            )
            await asyncio.to_thread(
                wait_for,
                lambda: outcome_counts(pg_url)["Delivered"] >= 8,
                timeout=60,
                message="deliveries before the kill",
            )
            await asyncio.to_thread(temporal_server.kill)
            killed = time.monotonic()
            killed_at = outcome_counts(pg_url)
            assert killed_at["Delivered"] < count, "killed too late"
            await asyncio.sleep(2)  # Completions keep coming while it is down.
            await asyncio.to_thread(temporal_server.start)
            restarted = time.monotonic()
            await completing
            assert temporal_server.starts == 2
            during = [t for t in appended if killed < t < restarted]
            assert len(during) >= 5, "too few completions were appended while it was down"

            parked_total = 0
            if retries == "parked_then_retried":
                await asyncio.to_thread(
                    wait_for,
                    lambda: dispatcher.log.position() == w.ledger.recorder.max_notification_id(),
                    timeout=60,
                    message="every completion to be recorded",
                )
                parked = await asyncio.to_thread(dispatcher.log.deliveries_in, Outcome.PARKED)
                assert parked, "nothing was parked: the outage was not felt"
                parked_total = len(parked)
                assert await dispatcher.retry_parked() == parked_total
            await check_completed_once(handle, execution_ids, 60)
            assert not running.done()
            dispatcher.stop()
            await asyncio.wait_for(running, 10)

            finals = finals_by_execution(w, execution_ids)
            counted: Counter[str] = Counter()
            for execution_id, outcomes in finals.items():
                *earlier, last = outcomes
                assert last in ("Delivered", "StaleAfterAttempt"), (execution_id, outcomes)
                assert all(o == "Parked" for o in earlier), (execution_id, outcomes)
                counted[last] += 1
                counted["parked"] += len(earlier)
            if retries == "outlast_the_outage":
                assert counted["parked"] == 0, counted
            else:
                assert counted["parked"] == parked_total
            assert counted["Delivered"] + counted["StaleAfterAttempt"] == count
            print(f"delivered before the kill: {killed_at['Delivered']}; outcomes: {counted}")

    run(scenario(), 240)


def complete_slowly(
    ledger: Ledger, execution_ids: list[str], pause: float, appended: list[float]
) -> None:
    for n, execution_id in enumerate(execution_ids):
        ledger.complete(execution_id, {"n": n})
        appended.append(time.monotonic())
        time.sleep(pause)


# 4. The dispatcher started before Temporal is reachable.

WAITING = re.compile(
    r"WARNING (?:__main__|projections(?:\.dispatch)?\.dispatcher):? "  # Its logger, run with -m.
    r"Temporal at (?P<address>\S+) not reachable \(.*\); "
    r"retrying in (?P<delay>[\d.]+)s \(waiting (?P<waited>\d+)s so far\)"
)


@pytest.mark.slow
@pytest.mark.temporal
def test_dispatcher_started_before_temporal_waits_with_backoff_then_delivers(
    pg_url: str, temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    count = 10
    log = tmp_path / "dispatcher.log"
    processes: list[subprocess.Popen[bytes]] = []

    async def scenario() -> None:
        async with world(pg_url, temporal_server.address) as w:
            handle, execution_ids = await start_many(w, count)
            for n, execution_id in enumerate(execution_ids):
                await asyncio.to_thread(w.ledger.complete, execution_id, {"n": n})
            await asyncio.to_thread(temporal_server.kill)  # Nothing listens on its port now.

            dispatcher = start_dispatcher(
                pg_url, temporal_server.address, log, PGAPPNAME=app_name("d")
            )
            processes.append(dispatcher)

            def waits_logged() -> list[re.Match[str]]:
                return [m for m in map(WAITING.search, log.read_text().splitlines()) if m]

            await asyncio.to_thread(
                wait_for,
                lambda: len(waits_logged()) >= 3 or dispatcher.poll() is not None,
                timeout=60,
                message="three waits for Temporal in the dispatcher's log",
            )
            check_alive(dispatcher, log)
            waits = waits_logged()
            assert len(waits) >= 3, log.read_text()
            assert {m["address"] for m in waits} == {temporal_server.address}
            delays = [float(m["delay"]) for m in waits]
            assert delays[0] == 0.2
            assert all(b == min(a * 2, 10.0) for a, b in itertools.pairwise(delays))
            assert "Traceback" not in log.read_text()
            assert outcome_counts(pg_url)["Attempted"] == 0

            await asyncio.to_thread(temporal_server.start)
            await check_completed_once(handle, execution_ids, 60)
            check_alive(dispatcher, log)
            await asyncio.to_thread(
                wait_for,
                lambda: outcome_counts(pg_url)["Delivered"] == count,
                timeout=60,
                message="every delivery to be recorded",
            )
            finals = finals_by_execution(w, execution_ids)
            assert all(f == ["Delivered"] for f in finals.values()), finals
            assert stop_process(dispatcher) == 0, log.read_text()[-3000:]

    try:
        run(scenario(), 240)
    finally:
        kill_all(processes)
