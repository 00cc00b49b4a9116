"""Workflow-side helpers: await an execution recorded in the ledger.

Inside a workflow::

    from ledger.workflow import execute_agent_execution

    final = await execute_agent_execution(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="hi")),
        start_to_close_timeout=timedelta(hours=1),
    )

The result is the final resource (status included, ``callback_token``
cleared). A FAILED execution raises ``ActivityError`` whose ``cause`` is an
``ApplicationError`` (type from the execution's error, ``ExecutionFailed`` by
default; ``ExecutionCancelled`` for a cancellation the caller did not ask for),
non-retryable, with the final resource as its first detail. A caller that
cancels its activity and whose execution is then cancelled sees a
cancellation.

``start_to_close_timeout`` applies per attempt and must cover the whole wait;
``heartbeat_timeout`` must stay unset (nobody heartbeats a pending async
activity). This module imports only the generated messages and
``temporalio.workflow``, so it is safe in the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
from ledger.api.workflowexecution.v1.api_pb2 import WorkflowExecution

START_AGENT_EXECUTION = "ledger.start_agent_execution"
START_WORKFLOW_EXECUTION = "ledger.start_workflow_execution"


async def execute_agent_execution(
    resource: AgentExecution, *, start_to_close_timeout: timedelta, **options: Any
) -> AgentExecution:
    """Records ``resource`` in the ledger and waits for its final resource."""
    _check(options)
    result: AgentExecution = await workflow.execute_activity(
        START_AGENT_EXECUTION,
        resource,
        result_type=AgentExecution,
        start_to_close_timeout=start_to_close_timeout,
        **options,
    )
    return result


async def execute_workflow_execution(
    resource: WorkflowExecution, *, start_to_close_timeout: timedelta, **options: Any
) -> WorkflowExecution:
    """Records ``resource`` in the ledger and waits for its final resource."""
    _check(options)
    result: WorkflowExecution = await workflow.execute_activity(
        START_WORKFLOW_EXECUTION,
        resource,
        result_type=WorkflowExecution,
        start_to_close_timeout=start_to_close_timeout,
        **options,
    )
    return result


def _check(options: dict[str, Any]) -> None:
    if options.get("heartbeat_timeout") is not None:
        msg = (
            "heartbeat_timeout must stay unset: nobody heartbeats an activity that "
            "waits for a ledger execution"
        )
        raise ValueError(msg)
