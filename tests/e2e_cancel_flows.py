"""More workflows for the end-to-end tests (importable by the worker's sandbox).

- :class:`CancellableAgentExecution`: awaits an AgentExecution and, on the
  ``cancel`` signal, cancels its activity and waits for the cancellation to be
  reported (``WAIT_CANCELLATION_COMPLETED``). Returns the final resource carried
  by the cancellation; fails with ``NotCancelled`` if the activity ended any
  other way.
- :class:`BriefAgentExecution`: awaits an AgentExecution with a short
  ``start_to_close_timeout`` and two attempts, so a slow execution times out
  and the retry records a new execution.
- :class:`ManyAgentExecutions`: awaits ``count`` AgentExecutions at once (one
  activity each, each its own task token) and returns their ids.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
    from ledger.temporal.workflow import START_AGENT_EXECUTION, execute_agent_execution

BRIEF_TIMEOUT = timedelta(seconds=1.5)


@workflow.defn
class CancellableAgentExecution:
    def __init__(self) -> None:
        self._cancel = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancel = True

    @workflow.run
    async def run(self, resource: AgentExecution) -> AgentExecution:
        handle = workflow.start_activity(
            START_AGENT_EXECUTION,
            resource,
            result_type=AgentExecution,
            start_to_close_timeout=timedelta(minutes=10),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        await workflow.wait_condition(lambda: self._cancel)
        handle.cancel()
        try:
            await handle
        except ActivityError as e:
            if isinstance(e.cause, CancelledError) and e.cause.details:
                final = e.cause.details[0]
                if isinstance(final, AgentExecution):
                    return final
            raise ApplicationError(f"not a cancellation: {e.cause!r}", type="NotCancelled") from e
        raise ApplicationError("the activity completed instead", type="NotCancelled")


@workflow.defn
class BriefAgentExecution:
    @workflow.run
    async def run(self, resource: AgentExecution) -> AgentExecution:
        return await execute_agent_execution(
            resource,
            start_to_close_timeout=BRIEF_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=0.1)),
        )


@workflow.defn
class ManyAgentExecutions:
    @workflow.run
    async def run(self, resource: AgentExecution, count: int) -> list[str]:
        finals = await asyncio.gather(
            *(
                execute_agent_execution(resource, start_to_close_timeout=timedelta(minutes=5))
                for _ in range(count)
            )
        )
        return [final.metadata.id for final in finals]
