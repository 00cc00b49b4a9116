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

``start_to_close_timeout`` applies per attempt and must cover the whole wait. A
``heartbeat_timeout`` is welcome: while the execution records status changes, the
ledger's dispatcher heartbeats the activity with its progress, and when the
execution records nothing for longer than the timeout, Temporal times the attempt
out and the retry policy applies (a retry records a new execution). The caller's
cancel requests reach the execution as ``CancelRequested``; ``cancellation_type``
says what the caller then waits for: ``WAIT_CANCELLATION_COMPLETED`` waits until the
runner cancels the execution and gets a cancellation; ``TRY_CANCEL`` (the default)
moves on at once, and the execution's later completion is recorded ``stale``.

This module imports only the generated messages and ``temporalio.workflow``, so it
is safe in the workflow sandbox (an import-linter contract keeps it so).
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
    result: WorkflowExecution = await workflow.execute_activity(
        START_WORKFLOW_EXECUTION,
        resource,
        result_type=WorkflowExecution,
        start_to_close_timeout=start_to_close_timeout,
        **options,
    )
    return result
