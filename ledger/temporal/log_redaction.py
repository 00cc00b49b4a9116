"""The Temporal SDK's own logs and warnings, with task tokens redacted."""

from __future__ import annotations

import logging
import re
import warnings

from google.protobuf.message import Message

from ledger.domain.redaction import redact_token


class TokenRedactingFilter(logging.Filter):
    """Redacts task tokens in the Temporal SDK's own DEBUG logs of the activity worker.

    The SDK logs ``(token %s)`` with the raw bytes and whole activity completions
    (whose ``task_token`` field is the token). This filter rewrites such arguments
    before any handler sees them: bytes become :func:`redact_token`, a message
    with a ``task_token`` field is shown with it redacted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_argument(a) for a in record.args)
        return True


def _redact_argument(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return redact_token(bytes(value))
    if isinstance(value, Message) and "task_token" in value.DESCRIPTOR.fields_by_name:
        token = bytes(getattr(value, "task_token", b""))
        copy = type(value)()
        copy.CopyFrom(value)
        copy.ClearField("task_token")
        return f"{copy} task_token: {redact_token(token)}"
    return value


TEMPORAL_ACTIVITY_LOGGER = "temporalio.worker._activity"


_UNKNOWN_CANCEL_WARNING = "Cannot find activity to cancel for token"
"""The start of a warning the SDK's worker issues (``warnings.warn``, not logging)
with the raw token's repr, when told to cancel an activity it no longer runs: an
async activity's, after it went async (the ledger completes it, not the worker)."""


def install_temporal_log_redaction() -> None:
    """Adds :class:`TokenRedactingFilter` to the SDK's activity worker logger (once),
    and ignores the SDK's unknown-cancellation warning, which carries a whole token."""
    sdk_logger = logging.getLogger(TEMPORAL_ACTIVITY_LOGGER)
    if not any(isinstance(f, TokenRedactingFilter) for f in sdk_logger.filters):
        sdk_logger.addFilter(TokenRedactingFilter())
    # Idempotent: the warnings module drops an identical filter before adding it.
    warnings.filterwarnings(
        "ignore",
        message=re.escape(_UNKNOWN_CANCEL_WARNING),
        module=re.escape(TEMPORAL_ACTIVITY_LOGGER),
    )
