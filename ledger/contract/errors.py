"""The ledger's typed errors.

Every rule a command can break has an exception type of its own. Each message
names the execution, the field and what was expected, and a command that raises
has written nothing.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""


class UserError(LedgerError):
    """The input was wrong: fixing the input fixes the call. Nothing was written."""


class InvalidResourceError(UserError):
    """A resource, spec, status patch or outcome breaks a rule of the contract.

    ``field`` is the dotted path of the offending field (``spec.agent_id``).
    """

    def __init__(self, message: str, *, execution_id: str = "", field: str = "") -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.field = field


class UnknownKindError(InvalidResourceError):
    """The ``kind`` or ``api_version`` is not one this ledger records."""


class MissingFieldError(InvalidResourceError):
    """A field the kind requires is empty."""


class CallbackTokenTooLargeError(InvalidResourceError):
    """``spec.callback_token`` is larger than the ledger accepts."""


class LimitExceededError(InvalidResourceError):
    """A value is larger than the ledger's documented limits."""


class InvalidIdError(InvalidResourceError):
    """An execution id is malformed or its prefix does not match the kind."""


class ExecutionNotFoundError(UserError):
    """No execution has this id."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} does not exist")
        self.execution_id = execution_id


class TransitionError(UserError):
    """The phase change is not allowed from the execution's current phase."""

    def __init__(self, message: str, *, execution_id: str, current: str, requested: str) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.current = current
        self.requested = requested


class PhaseBackwardsError(TransitionError):
    """The requested phase comes before the current one (e.g. IN_PROGRESS to PENDING)."""


class TerminalPhaseError(TransitionError):
    """The execution already reached a terminal phase; nothing more can be written to it."""


class ConflictError(UserError):
    """The write conflicts with what is already recorded."""


class CreateConflictError(ConflictError):
    """An execution with this id exists with a different kind or spec."""

    def __init__(self, execution_id: str, detail: str) -> None:
        super().__init__(
            f"execution {execution_id!r} already exists with a different {detail}; "
            "create is idempotent only for an identical spec"
        )
        self.execution_id = execution_id


class ExecutionDeletedError(ExecutionNotFoundError):
    """The execution was deleted: its history is kept, but it is no longer read or written."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(execution_id)
        self.args = (f"execution {execution_id!r} was deleted",)


class ImmutableFieldError(ConflictError):
    """An update would change what cannot change (the spec, the envelope, the metadata
    beyond labels, annotations and tags)."""

    def __init__(self, execution_id: str, field: str) -> None:
        super().__init__(
            f"execution {execution_id!r}: {field} cannot change after create "
            "(an update changes metadata labels, annotations and tags only)"
        )
        self.execution_id = execution_id
        self.field = field


class VersionConflictError(ConflictError):
    """The caller's ``expected_version`` is not the execution's current version."""

    def __init__(self, execution_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"execution {execution_id!r} is at version {actual}, not the expected {expected}"
        )
        self.execution_id = execution_id
        self.expected = expected
        self.actual = actual


class ConfigurationError(UserError):
    """A setting (``LEDGER_URL`` and friends) is malformed."""


class PermissionDeniedError(LedgerError):
    """The store refused the operation to this role (see ``ledger roles``)."""


class UnreadableEventError(LedgerError):
    """A stored event cannot be decoded: most often a missing or wrong cipher key
    (``LEDGER_CIPHER_KEY`` / ``LEDGER_CIPHER_OLD_KEYS``)."""


class StoreUnavailableError(LedgerError):
    """The store could not be reached; the command wrote nothing and may be retried."""


class CipherKeyMismatchError(ConfigurationError):
    """The cipher settings do not fit the store: a key on a store whose events are not
    encrypted, none on one whose events are, or a key the store does not know.

    Raised when the ledger is opened, before anything is written or read, so that no
    misconfigured process can write events its peers cannot read. ``ledger keys``
    lists the keys a store knows (by check value, never the key) and registers new ones.
    """


class StoreNotFoundError(UserError):
    """A read found no ledger at the configured store (``LEDGER_URL``): nothing has been
    recorded there yet. Reads never create a store; a write, or ``ledger setup``, does."""
