"""Workflows used by the end-to-end tests (importable by the worker)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
    from ledger.api.workflowexecution.v1.api_pb2 import WorkflowExecution
    from ledger.temporal.workflow import execute_agent_execution, execute_workflow_execution


@workflow.defn
class AwaitAgentExecution:
    @workflow.run
    async def run(self, resource: AgentExecution) -> AgentExecution:
        return await execute_agent_execution(resource, start_to_close_timeout=timedelta(minutes=10))


@workflow.defn
class AwaitWorkflowExecution:
    @workflow.run
    async def run(self, resource: WorkflowExecution) -> WorkflowExecution:
        return await execute_workflow_execution(
            resource, start_to_close_timeout=timedelta(minutes=10)
        )
