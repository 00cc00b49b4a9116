"""Redaction of secrets for display and logs.

The callback token is a bearer credential: whoever holds it can complete the
caller's activity. It is never shown or logged whole: it shows as the first 20
characters of its base64 and its length in bytes. ``runtime_env`` values marked
``is_secret`` show as ``***``.
"""

from __future__ import annotations

import base64
import logging
import re
import warnings
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

TOKEN_PREFIX_CHARS = 20
SECRET_MASK = "***"  # noqa: S105 - a mask, not a password


def redact_token(token: bytes) -> str:
    """``'CiQ5ZTM2YmM2Ny1mNz…(312 bytes)'``, or ``''`` for an empty token."""
    if not token:
        return ""
    encoded = base64.b64encode(token).decode("ascii")
    return f"{encoded[:TOKEN_PREFIX_CHARS]}…({len(token)} bytes)"


def display_dict(resource: Message) -> dict[str, Any]:
    """A resource in the proto's JSON form, with its token and secret values redacted."""
    shown: dict[str, Any] = MessageToDict(resource, preserving_proto_field_name=True)
    spec = shown.get("spec")
    if not isinstance(spec, dict):
        return shown
    raw_token = getattr(getattr(resource, "spec", None), "callback_token", b"")
    if raw_token:
        spec["callback_token"] = redact_token(bytes(raw_token))
    for value in (spec.get("runtime_env") or {}).values():
        if isinstance(value, dict) and value.get("is_secret"):
            value["value"] = SECRET_MASK
    return shown


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
