"""The workflows of ``ledger demo``: each awaits one execution recorded in the ledger.

Kept apart from :mod:`ledger.demo` so the workflow sandbox imports only what
workflows need (the generated messages and :mod:`ledger.workflow`).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
    from ledger.api.workflowexecution.v1.api_pb2 import WorkflowExecution
    from ledger.temporal.workflow import execute_agent_execution, execute_workflow_execution


@workflow.defn(name="DemoAwaitAgentExecution")
class AwaitAgentExecution:
    """Starts an AgentExecution and returns its final resource."""

    @workflow.run
    async def run(self, resource: AgentExecution) -> AgentExecution:
        return await execute_agent_execution(resource, start_to_close_timeout=timedelta(minutes=5))


@workflow.defn(name="DemoAwaitWorkflowExecution")
class AwaitWorkflowExecution:
    """Starts a WorkflowExecution and returns its final resource."""

    @workflow.run
    async def run(self, resource: WorkflowExecution) -> WorkflowExecution:
        return await execute_workflow_execution(
            resource, start_to_close_timeout=timedelta(minutes=5)
        )
