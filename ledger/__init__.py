"""execution-ledger: an event-sourced ledger of agent and workflow executions.

Open a ledger with :func:`open_ledger` (``LEDGER_URL``: ``sqlite:///path``,
``postgresql://...`` or ``memory://``), then record executions with its
commands (``create``, ``update_status``, ``complete``, ``fail``, ``cancel``)
and read them back (``get``, ``read``, ``history``).
"""

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
