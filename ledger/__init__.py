"""execution-ledger: an event-sourced ledger of agent and workflow executions.

Open a ledger with :func:`open_ledger` (``LEDGER_URL``: ``sqlite:///path``,
``postgresql://...`` or ``memory://``), then record executions with its
commands (``create``, ``update_status``, ``complete``, ``fail``, ``cancel``)
and read them back (``get``, ``read``, ``history``).
"""

from ledger.application import (
    ExecutionRecord,
    HistoryEntry,
    Ledger,
    open_ledger,
)
from ledger.contract.errors import (
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
