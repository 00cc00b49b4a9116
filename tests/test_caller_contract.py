"""The caller contract (issue 11): what the waiting caller receives and what ``get()``
shows, for both kinds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.worker import Worker

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    ExecutionNotFoundError,
    ExecutionRecord,
    Ledger,
    Phase,
    WorkflowExecution,
    WorkflowExecutionSpec,
    open_ledger,
)
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.contract.names import (
    CALLER_ATTEMPT,
    CALLER_GONE_REASON,
    CALLER_RUN_ID,
    CALLER_WORKFLOW_ID,
    CANCEL_REQUESTED_AT,
    CANCEL_REQUESTED_BY,
)
from ledger.domain.execution import Execution
from ledger.store.url import parse_url
from ledger.temporal.caller import ExecutionActivities
from projections.dispatch.callers import CallerWatch
from projections.dispatch.calls import final_resource
from projections.dispatch.dispatcher import Dispatcher
from projections.dispatch.log import DispatcherLog
from tests.e2e_caller_flows import AwaitWithRetries, TalkingCaller
from tests.support.processes import python_process, start_dispatcher
from tests.support.waiting import wait_for


def test_the_output_of_both_kinds_is_in_the_final_resource(ledger_app: Ledger) -> None:
    agent = ledger_app.create(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m", callback_token=b"t"))
    ).id
    workflow = ledger_app.create(
        WorkflowExecution(spec=WorkflowExecutionSpec(workflow_id="w", callback_token=b"t"))
    ).id
    output = {"summary": "Revenue grew 12%", "figures": [1.0, 2.5], "ok": True}
    for execution_id in (agent, workflow):
        ledger_app.complete(execution_id, output)
        resource = ledger_app.get(execution_id)
        assert dict(resource.status.output) == {**output, "figures": [1.0, 2.5]}
        # What the dispatcher sends the caller: the same output, the token cleared.
        execution: object = ledger_app.repository.get(execution_id)
        assert isinstance(execution, Execution)
        sent = final_resource(execution)
        assert sent.status.output == resource.status.output
        assert sent.spec.callback_token == b""


# With a real Temporal dev server.


@pytest.mark.temporal
def test_a_caller_given_id_is_kept_for_attempt_1_and_suffixed_after(
    store_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        client = await Client.connect(temporal_address)
        task_queue = f"q-{uuid.uuid4().hex}"
        with open_ledger(store_url) as ledger:
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[AwaitWithRetries],
                activities=ExecutionActivities(ledger).all(),
            ):
                resource = AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))
                resource.metadata.id = "aex-mine"
                handle = await client.start_workflow(
                    AwaitWithRetries.run,
                    args=[resource, 2.0],
                    id=f"wf-{uuid.uuid4().hex}",
                    task_queue=task_queue,
                )
                first = await _recorded(ledger, "aex-mine")
                # Attempt 1 times out (nobody completes it); attempt 2 gets its own id.
                second = await _recorded(ledger, "aex-mine-a2")
                annotations = first.resource.metadata.annotations
                assert annotations[CALLER_WORKFLOW_ID] == handle.id
                assert annotations[CALLER_RUN_ID] == handle.result_run_id
                assert annotations[CALLER_ATTEMPT] == "1"
                assert second.resource.metadata.annotations[CALLER_ATTEMPT] == "2"
                assert first.resource.spec.callback_token != second.resource.spec.callback_token
                await handle.terminate()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.temporal
def test_a_refused_resource_fails_the_caller_without_retry(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        client = await Client.connect(temporal_address)
        task_queue = f"q-{uuid.uuid4().hex}"
        with open_ledger(sqlite_url) as ledger:
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[AwaitWithRetries],
                activities=ExecutionActivities(ledger).all(),
            ):
                resource = AgentExecution(spec=AgentExecutionSpec(agent_id="a"))  # No message.
                handle = await client.start_workflow(
                    AwaitWithRetries.run,
                    args=[resource, 30.0],
                    id=f"wf-{uuid.uuid4().hex}",
                    task_queue=task_queue,
                )
                with pytest.raises(WorkflowFailureError) as failed:
                    await handle.result()
                cause = failed.value.cause
                assert isinstance(cause, ActivityError)
                assert isinstance(cause.cause, ApplicationError)
                assert cause.cause.type == "MissingFieldError"
                assert cause.cause.non_retryable
                assert cause.retry_state == RetryState.NON_RETRYABLE_FAILURE

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _recorded(ledger: Ledger, execution_id: str, timeout: float = 30.0) -> ExecutionRecord:
    """The execution once it is in the ledger (the caller activity records it)."""

    def exists() -> bool:
        try:
            ledger.read(execution_id)
        except ExecutionNotFoundError:
            return False
        return True

    await asyncio.to_thread(wait_for, exists, timeout, 0.05, f"{execution_id} recorded")
    return await asyncio.to_thread(ledger.read, execution_id)


def test_cancel_requests_and_a_gone_caller_are_recorded_once(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m", callback_token=b"t"))
    ).id
    first = ledger_app.record_cancel_request(execution_id, by="wf-1")
    again = ledger_app.record_cancel_request(execution_id, by="wf-1")
    assert first.version == again.version == 2  # Once.
    annotations = first.resource.metadata.annotations
    assert annotations[CANCEL_REQUESTED_BY] == "wf-1"
    assert annotations[CANCEL_REQUESTED_AT].endswith("Z")
    assert first.phase is Phase.PENDING  # A signal, not an ending.
    gone = ledger_app.record_caller_gone(execution_id, "the caller's activity timed out")
    assert gone.version == 3
    assert ledger_app.record_caller_gone(execution_id, "again").version == 3
    assert gone.resource.metadata.annotations[CALLER_GONE_REASON].startswith("the caller's")
    # The runner still ends it; afterwards neither signal is recorded any more.
    ledger_app.cancel(execution_id, "the caller asked")
    other = ledger_app.create(AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))).id
    ledger_app.complete(other, {})
    assert ledger_app.record_cancel_request(other).version == 2
    assert ledger_app.record_caller_gone(other, "late").version == 2
    types = [h.type for h in ledger_app.history(execution_id)]
    assert types == ["Created", "CancelRequested", "CallerGone", "Completed"]


# The conversation while the execution runs: heartbeats, cancel requests, gone callers.


@dataclass
class _Talk:
    client: Client
    ledger: Ledger
    task_queue: str
    url: str
    watch: CallerWatch | None

    async def start(
        self, execution_id: str, heartbeat: float, cancellation: str, attempts: int = 1
    ) -> WorkflowHandle[Any, Any]:
        resource = AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))
        resource.metadata.id = execution_id
        handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
            TalkingCaller.run,
            args=[resource, heartbeat, cancellation, attempts],
            id=f"wf-{uuid.uuid4().hex}",
            task_queue=self.task_queue,
        )
        await _recorded(self.ledger, execution_id)
        return handle

    async def progress(self, execution_id: str, step: int) -> None:
        patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
        patch.tool_calls.add(id=f"call-{step}", name=f"tool-{step}")
        await asyncio.to_thread(self.ledger.update_status, execution_id, patch)

    async def annotation(self, execution_id: str, name: str, timeout: float = 30.0) -> str:
        def present() -> bool:
            return name in self.ledger.get(execution_id).metadata.annotations

        await asyncio.to_thread(wait_for, present, timeout, 0.1, f"{execution_id}: {name}")
        resource = await asyncio.to_thread(self.ledger.get, execution_id)
        return str(resource.metadata.annotations[name])


@asynccontextmanager
async def _talking(url: str, address: str) -> AsyncIterator[_Talk]:
    """A worker and a dispatcher (which runs the caller watch), all on ``url``."""
    client = await Client.connect(address)
    task_queue = f"q-{uuid.uuid4().hex}"
    with open_ledger(url) as ledger:
        dispatcher = Dispatcher(parse_url(url), client, poll_interval=0.05, probe_interval=1.0)
        assert dispatcher.callers is not None
        try:
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[TalkingCaller],
                activities=ExecutionActivities(ledger).all(),
            ):
                running = asyncio.create_task(dispatcher.run())
                try:
                    yield _Talk(client, ledger, task_queue, url, dispatcher.callers)
                finally:
                    dispatcher.stop()
                    await running
        finally:
            dispatcher.close()


async def _heartbeat_details(handle: WorkflowHandle[Any, Any]) -> tuple[int, dict[str, Any]]:
    """The attempt and last heartbeat details of the caller's pending activity."""
    description = await handle.describe()
    (pending,) = description.raw_description.pending_activities
    payloads = pending.heartbeat_details.payloads
    details = json.loads(payloads[0].data) if payloads else {}
    return pending.attempt, details


@pytest.mark.temporal
def test_progress_flows_as_heartbeats_and_silence_times_the_caller_out(
    store_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with _talking(store_url, temporal_address) as talk:
            execution_id = f"aex-hb-{uuid.uuid4().hex[:8]}"
            handle = await talk.start(
                execution_id, heartbeat=5.0, cancellation="TRY_CANCEL", attempts=2
            )
            for step in range(10):  # Progress every 2 s for 20 s: four timeouts' worth.
                await talk.progress(execution_id, step)
                await asyncio.sleep(2.0)
                attempt, _ = await _heartbeat_details(handle)
                assert attempt == 1  # Alive: each change was heartbeated in time.
            deadline = time.monotonic() + 30
            while True:  # The latest progress reaches the caller's describe.
                attempt, details = await _heartbeat_details(handle)
                if details.get("last") == "tool-9":
                    break
                assert time.monotonic() < deadline, details
                await asyncio.sleep(0.2)
            assert attempt == 1
            assert details["tool_calls"] == 10
            assert details["phase"] == "IN_PROGRESS"
            assert "callback_token" not in json.dumps(details)
            # Silence: nothing keeps the attempt alive; Temporal times it out and the
            # retry records a new execution, and the first one's caller is gone.
            retried = await _recorded(talk.ledger, execution_id + "-a2", timeout=60)
            assert retried.resource.metadata.annotations[CALLER_ATTEMPT] == "2"
            reason = await talk.annotation(execution_id, CALLER_GONE_REASON)
            assert "attempt 2" in reason or "no longer pending" in reason or "not found" in reason
            await handle.terminate()

    asyncio.run(asyncio.wait_for(scenario(), 180))


@pytest.mark.temporal
@pytest.mark.parametrize(
    ("heartbeat", "cancellation"),
    [
        (0.0, "WAIT_CANCELLATION_COMPLETED"),
        (5.0, "WAIT_CANCELLATION_COMPLETED"),
        (0.0, "TRY_CANCEL"),
        (5.0, "TRY_CANCEL"),
    ],
)
def test_the_callers_cancel_reaches_the_execution(
    store_url: str, temporal_address: str, heartbeat: float, cancellation: str
) -> None:
    async def scenario() -> None:
        async with _talking(store_url, temporal_address) as talk:
            execution_id = f"aex-cancel-{uuid.uuid4().hex[:8]}"
            handle = await talk.start(execution_id, heartbeat=heartbeat, cancellation=cancellation)
            await talk.progress(execution_id, 0)
            asked = time.monotonic()
            await handle.signal(TalkingCaller.cancel)
            await talk.annotation(execution_id, CANCEL_REQUESTED_AT, timeout=30)
            elapsed = time.monotonic() - asked
            assert elapsed <= 10.0, f"the cancel request took {elapsed:.1f} s to be recorded"
            if cancellation == "TRY_CANCEL":
                await handle.signal(TalkingCaller.finish)
                assert await handle.result() == "moved-on"
            await asyncio.to_thread(talk.ledger.cancel, execution_id, "the caller asked")
            if cancellation == "WAIT_CANCELLATION_COMPLETED":
                assert await asyncio.wait_for(handle.result(), 30) == "cancelled"
            outcome = await _outcome(talk.url, execution_id)
            assert outcome == (
                "delivered" if cancellation == "WAIT_CANCELLATION_COMPLETED" else "stale"
            )
            types = [h.type for h in talk.ledger.history(execution_id)]
            assert types.count("CancelRequested") == 1

    asyncio.run(asyncio.wait_for(scenario(), 120))


@pytest.mark.temporal
def test_a_terminated_caller_is_known_as_gone(sqlite_url: str, temporal_address: str) -> None:
    async def scenario() -> None:
        async with _talking(sqlite_url, temporal_address) as talk:
            execution_id = f"aex-gone-{uuid.uuid4().hex[:8]}"
            handle = await talk.start(execution_id, heartbeat=0.0, cancellation="TRY_CANCEL")
            ended = time.monotonic()
            await handle.terminate(reason="operator")
            reason = await talk.annotation(execution_id, CALLER_GONE_REASON, timeout=30)
            assert time.monotonic() - ended <= 10.0
            assert "terminated" in reason
            # Completing it later is still allowed, and its delivery is stale.
            await asyncio.to_thread(talk.ledger.complete, execution_id, {"late": True})
            assert await _outcome(talk.url, execution_id) == "stale"

    asyncio.run(asyncio.wait_for(scenario(), 90))


async def _outcome(url: str, execution_id: str, timeout: float = 30.0) -> str:
    """The dispatcher's recorded outcome for one execution, once it has one."""
    log = DispatcherLog(parse_url(url).component_env("dispatcher"))
    try:
        deadline = time.monotonic() + timeout
        while True:
            delivery = await asyncio.to_thread(log.delivery, execution_id)
            if delivery is not None and delivery.is_final:
                return str(delivery.outcome.value)
            assert time.monotonic() < deadline, f"{execution_id}: no outcome in {timeout} s"
            await asyncio.sleep(0.1)
    finally:
        log.close()


@pytest.mark.temporal
def test_a_killed_dispatcher_never_heartbeats_an_ended_execution_nor_repeats_a_request(
    sqlite_url: str, temporal_address: str, tmp_path: Path
) -> None:
    """SIGKILL the dispatcher while it heartbeats five callers and has recorded two
    cancel requests; end every execution while it is down; the restarted one wakes
    every caller, sends no heartbeat (it rebuilt its state from the log first), and
    records no second CancelRequested."""

    async def scenario() -> None:
        client = await Client.connect(temporal_address)
        task_queue = f"q-{uuid.uuid4().hex}"
        with open_ledger(sqlite_url) as ledger:
            talk = _Talk(client, ledger, task_queue, sqlite_url, None)
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[TalkingCaller],
                activities=ExecutionActivities(ledger).all(),
            ):
                ids = [f"aex-kill-{n}-{uuid.uuid4().hex[:6]}" for n in range(5)]
                handles = [
                    await talk.start(i, heartbeat=30.0, cancellation="WAIT_CANCELLATION_COMPLETED")
                    for i in ids
                ]
                first_log = tmp_path / "dispatcher-1.log"
                dispatcher = start_dispatcher(sqlite_url, temporal_address, first_log)
                try:
                    for execution_id in ids:
                        await talk.progress(execution_id, 1)
                    for handle in handles:  # Heartbeats arrive (the watch is running).

                        async def beaten(h: WorkflowHandle[Any, Any] = handle) -> bool:
                            return bool((await _heartbeat_details(h))[1])

                        await _until(beaten, 60)
                    for handle in handles[:2]:
                        await handle.signal(TalkingCaller.cancel)
                    for execution_id in ids[:2]:
                        await talk.annotation(execution_id, CANCEL_REQUESTED_AT, timeout=60)
                finally:
                    dispatcher.kill()
                    dispatcher.wait()
                for execution_id in ids[:2]:
                    await asyncio.to_thread(ledger.cancel, execution_id, "the caller asked")
                for execution_id in ids[2:]:
                    await asyncio.to_thread(ledger.complete, execution_id, {"ok": True})
                second_log = tmp_path / "dispatcher-2.log"
                restarted = python_process(
                    ["-m", "ledger", "dispatcher", "run", "--log-level", "debug"],
                    {"LEDGER_URL": sqlite_url, "TEMPORAL_ADDRESS": temporal_address},
                    second_log,
                )
                try:
                    results = await asyncio.wait_for(
                        asyncio.gather(*(h.result() for h in handles)), 120
                    )
                finally:
                    restarted.terminate()
                    restarted.wait(60)
                assert results == ["cancelled"] * 2 + ["completed"] * 3
                for execution_id in ids:
                    types = [h.type for h in ledger.history(execution_id)]
                    assert types.count("CancelRequested") == (1 if execution_id in ids[:2] else 0)
                logged = second_log.read_text()
                assert "heartbeat at version" not in logged, logged[-3000:]
                assert "DEBUG" in logged  # It did log at debug level: the check can fail.

    asyncio.run(asyncio.wait_for(scenario(), 300))


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)
