"""The caller contract (issue 11): what the waiting caller receives and what ``get()``
shows, for both kinds."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.worker import Worker

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    ExecutionNotFoundError,
    ExecutionRecord,
    Ledger,
    Phase,
    WorkflowExecution,
    WorkflowExecutionSpec,
    open_ledger,
)
from ledger.contract.names import (
    CALLER_ATTEMPT,
    CALLER_GONE_REASON,
    CALLER_RUN_ID,
    CALLER_WORKFLOW_ID,
    CANCEL_REQUESTED_AT,
    CANCEL_REQUESTED_BY,
)
from ledger.domain.execution import Execution
from ledger.temporal.caller import ExecutionActivities
from projections.dispatch.calls import final_resource
from tests.e2e_caller_flows import AwaitWithRetries


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
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.to_thread(ledger.read, execution_id)
        except ExecutionNotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


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
