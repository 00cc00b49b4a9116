"""execution-ledger: an event-sourced ledger of agent and workflow executions.

Open a ledger with :func:`open_ledger` (``LEDGER_URL``: ``sqlite:///path``,
``postgresql://...`` or ``memory://``), then record executions with its
commands (``create``, ``update_status``, ``complete``, ``fail``, ``cancel``)
and read them back (``get``, ``read``, ``history``).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.application import ExecutionRecord, HistoryEntry, Ledger, open_ledger
    from ledger.errors import (
        CallbackTokenTooLargeError,
        ConfigurationError,
        ConflictError,
        CreateConflictError,
        ExecutionNotFoundError,
        InvalidIdError,
        InvalidResourceError,
        LedgerError,
        LimitExceededError,
        MissingFieldError,
        PermissionDeniedError,
        PhaseBackwardsError,
        StoreUnavailableError,
        TerminalPhaseError,
        TransitionError,
        UnknownKindError,
        UnreadableEventError,
        UserError,
        VersionConflictError,
    )
    from ledger.resources import (
        AgentExecution,
        AgentExecutionSpec,
        AgentExecutionStatus,
        Phase,
        WorkflowExecution,
        WorkflowExecutionSpec,
        WorkflowExecutionStatus,
    )

# Exports load on first use, so that importing ``ledger.workflow`` inside a
# Temporal workflow sandbox does not import the whole ledger (stores, ciphers).
_EXPORTS = {
    "AgentExecution": "ledger.resources",
    "AgentExecutionSpec": "ledger.resources",
    "AgentExecutionStatus": "ledger.resources",
    "CallbackTokenTooLargeError": "ledger.errors",
    "ConfigurationError": "ledger.errors",
    "ConflictError": "ledger.errors",
    "CreateConflictError": "ledger.errors",
    "ExecutionNotFoundError": "ledger.errors",
    "ExecutionRecord": "ledger.application",
    "HistoryEntry": "ledger.application",
    "InvalidIdError": "ledger.errors",
    "InvalidResourceError": "ledger.errors",
    "Ledger": "ledger.application",
    "LedgerError": "ledger.errors",
    "LimitExceededError": "ledger.errors",
    "MissingFieldError": "ledger.errors",
    "PermissionDeniedError": "ledger.errors",
    "Phase": "ledger.resources",
    "PhaseBackwardsError": "ledger.errors",
    "StoreUnavailableError": "ledger.errors",
    "TerminalPhaseError": "ledger.errors",
    "TransitionError": "ledger.errors",
    "UnknownKindError": "ledger.errors",
    "UnreadableEventError": "ledger.errors",
    "UserError": "ledger.errors",
    "VersionConflictError": "ledger.errors",
    "WorkflowExecution": "ledger.resources",
    "WorkflowExecutionSpec": "ledger.resources",
    "WorkflowExecutionStatus": "ledger.resources",
    "open_ledger": "ledger.application",
}


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        msg = f"module 'ledger' has no attribute {name!r}"
        raise AttributeError(msg) from None
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AgentExecution",
    "AgentExecutionSpec",
    "AgentExecutionStatus",
    "CallbackTokenTooLargeError",
    "ConfigurationError",
    "ConflictError",
    "CreateConflictError",
    "ExecutionNotFoundError",
    "ExecutionRecord",
    "HistoryEntry",
    "InvalidIdError",
    "InvalidResourceError",
    "Ledger",
    "LedgerError",
    "LimitExceededError",
    "MissingFieldError",
    "PermissionDeniedError",
    "Phase",
    "PhaseBackwardsError",
    "StoreUnavailableError",
    "TerminalPhaseError",
    "TransitionError",
    "UnknownKindError",
    "UnreadableEventError",
    "UserError",
    "VersionConflictError",
    "WorkflowExecution",
    "WorkflowExecutionSpec",
    "WorkflowExecutionStatus",
    "open_ledger",
]
