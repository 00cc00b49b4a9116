"""Workflows of the caller-contract tests (importable by the worker's sandbox)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
    from ledger.temporal.workflow import START_AGENT_EXECUTION, execute_agent_execution


@workflow.defn
class AwaitWithRetries:
    """Awaits an execution with a short per-attempt timeout and two attempts."""

    @workflow.run
    async def run(self, resource: AgentExecution, seconds: float) -> AgentExecution:
        return await execute_agent_execution(
            resource,
            start_to_close_timeout=timedelta(seconds=seconds),
            retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=0.1)),
        )


@workflow.defn
class TalkingCaller:
    """Awaits an AgentExecution with a given ``heartbeat_timeout`` (seconds; 0: none),
    ``cancellation_type`` and number of attempts. On the ``cancel`` signal it cancels
    its activity. Returns how the wait ended: ``completed``, ``cancelled`` (the
    cancellation was reported), ``moved-on`` (TRY_CANCEL: it did not wait; it then
    waits for the ``finish`` signal, so its activity stays visible to the ledger's
    probe), or ``failed:<cause>``."""

    def __init__(self) -> None:
        self._cancel = False
        self._finish = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancel = True

    @workflow.signal
    def finish(self) -> None:
        self._finish = True

    @workflow.run
    async def run(
        self, resource: AgentExecution, heartbeat_seconds: float, cancellation: str, attempts: int
    ) -> str:
        handle = workflow.start_activity(
            START_AGENT_EXECUTION,
            resource,
            result_type=AgentExecution,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=heartbeat_seconds) if heartbeat_seconds else None,
            cancellation_type=ActivityCancellationType[cancellation],
            retry_policy=RetryPolicy(
                maximum_attempts=attempts, initial_interval=timedelta(seconds=0.1)
            ),
        )
        await workflow.wait_condition(lambda: self._cancel or handle.done())
        if not handle.done():
            handle.cancel()
        try:
            await handle
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):
                if cancellation == "TRY_CANCEL":
                    await workflow.wait_condition(lambda: self._finish)
                    return "moved-on"
                return "cancelled"
            return f"failed:{type(e.cause).__name__}"
        return "completed"
