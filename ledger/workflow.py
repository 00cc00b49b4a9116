"""Alias of :mod:`ledger.temporal.workflow`, kept so that round 1's imports keep working."""

from ledger.temporal.workflow import (
    START_AGENT_EXECUTION,
    START_WORKFLOW_EXECUTION,
    execute_agent_execution,
    execute_workflow_execution,
)

__all__ = [
    "START_AGENT_EXECUTION",
    "START_WORKFLOW_EXECUTION",
    "execute_agent_execution",
    "execute_workflow_execution",
]
