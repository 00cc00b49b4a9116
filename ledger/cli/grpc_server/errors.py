"""The ledger's typed errors as gRPC status codes.

A refused call carries the typed error's own message, nothing else: never a stack
trace, never a token (the ledger's messages name an execution, a field and what
was expected; the callback token never appears in them). An error the ledger did
not raise on purpose is logged here and answered ``INTERNAL`` with a fixed text.
"""

from __future__ import annotations

import logging

import grpc

from ledger.contract.errors import (
    CreateConflictError,
    ExecutionNotFoundError,
    ImmutableFieldError,
    LedgerError,
    PermissionDeniedError,
    StoreUnavailableError,
    TransitionError,
    UnreadableEventError,
    UserError,
    VersionConflictError,
)

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error (the server logged it)"

_CODES: tuple[tuple[type[LedgerError], grpc.StatusCode], ...] = (
    # Most specific first: the first class that matches decides.
    (ExecutionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (CreateConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (VersionConflictError, grpc.StatusCode.ABORTED),
    (TransitionError, grpc.StatusCode.FAILED_PRECONDITION),  # Terminal, backwards.
    (ImmutableFieldError, grpc.StatusCode.FAILED_PRECONDITION),  # update: a changed spec.
    (UserError, grpc.StatusCode.INVALID_ARGUMENT),  # Validation, limits, ids.
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnreadableEventError, grpc.StatusCode.INTERNAL),
    (LedgerError, grpc.StatusCode.INTERNAL),
)


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message that answer a call the ledger refused with ``error``."""
    if isinstance(error, LedgerError):
        for cls, code in _CODES:
            if isinstance(error, cls):
                return code, str(error)
    logger.error("unexpected error in a call", exc_info=error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
