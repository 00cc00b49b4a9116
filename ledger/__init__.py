"""execution-ledger: an event-sourced ledger of agent and workflow executions.

Open a ledger with :func:`open_ledger` (``LEDGER_URL``: ``sqlite:///path``,
``postgresql://...`` or ``memory://``), then record executions with its
commands (``create``, ``update_status``, ``complete``, ``fail``, ``cancel``)
and read them back (``get``, ``read``, ``history``).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.application import (
        ExecutionRecord,
        HistoryEntry,
        Ledger,
        open_ledger,
    )
    from ledger.contract.errors import (
        CallbackTokenTooLargeError,
        CipherKeyMismatchError,
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
        StoreNotFoundError,
        StoreUnavailableError,
        TerminalPhaseError,
        TransitionError,
        UnknownKindError,
        UnreadableEventError,
        UserError,
        VersionConflictError,
    )
    from ledger.contract.kinds import (
        AgentExecution,
        AgentExecutionSpec,
        AgentExecutionStatus,
        WorkflowExecution,
        WorkflowExecutionSpec,
        WorkflowExecutionStatus,
    )
    from ledger.contract.phases import (
        Phase,
    )

# The public names load on first use (PEP 562), so that importing any module of the
# package loads only what that module needs: the CLI's entry point can catch a
# Ctrl-C while the rest imports, and ``ledger.temporal.workflow`` (the workflow-side
# helpers, sandbox-safe: an import-linter contract keeps stores and drivers out of
# it) loads no store inside a Temporal workflow sandbox.
_EXPORTS = {
    "AgentExecution": "ledger.contract.kinds",
    "AgentExecutionSpec": "ledger.contract.kinds",
    "AgentExecutionStatus": "ledger.contract.kinds",
    "CallbackTokenTooLargeError": "ledger.contract.errors",
    "CipherKeyMismatchError": "ledger.contract.errors",
    "ConfigurationError": "ledger.contract.errors",
    "ConflictError": "ledger.contract.errors",
    "CreateConflictError": "ledger.contract.errors",
    "ExecutionNotFoundError": "ledger.contract.errors",
    "ExecutionRecord": "ledger.application",
    "HistoryEntry": "ledger.application",
    "InvalidIdError": "ledger.contract.errors",
    "InvalidResourceError": "ledger.contract.errors",
    "Ledger": "ledger.application",
    "LedgerError": "ledger.contract.errors",
    "LimitExceededError": "ledger.contract.errors",
    "MissingFieldError": "ledger.contract.errors",
    "PermissionDeniedError": "ledger.contract.errors",
    "Phase": "ledger.contract.phases",
    "PhaseBackwardsError": "ledger.contract.errors",
    "StoreNotFoundError": "ledger.contract.errors",
    "StoreUnavailableError": "ledger.contract.errors",
    "TerminalPhaseError": "ledger.contract.errors",
    "TransitionError": "ledger.contract.errors",
    "UnknownKindError": "ledger.contract.errors",
    "UnreadableEventError": "ledger.contract.errors",
    "UserError": "ledger.contract.errors",
    "VersionConflictError": "ledger.contract.errors",
    "WorkflowExecution": "ledger.contract.kinds",
    "WorkflowExecutionSpec": "ledger.contract.kinds",
    "WorkflowExecutionStatus": "ledger.contract.kinds",
    "open_ledger": "ledger.application",
}


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        msg = f"module 'ledger' has no attribute {name!r}"
        raise AttributeError(msg) from None
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AgentExecution",
    "AgentExecutionSpec",
    "AgentExecutionStatus",
    "CallbackTokenTooLargeError",
    "CipherKeyMismatchError",
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
    "StoreNotFoundError",
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
