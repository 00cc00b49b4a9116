"""Workflows of the caller-contract tests (importable by the worker's sandbox)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from ledger.api.agentexecution.v1.api_pb2 import AgentExecution
    from ledger.temporal.workflow import execute_agent_execution


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
