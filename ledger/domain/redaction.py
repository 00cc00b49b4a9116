"""Redaction of secrets for display and logs.

The callback token is a bearer credential: whoever holds it can complete the
caller's activity. It is never shown or logged whole: it shows as the first 20
characters of its base64 and its length in bytes. ``runtime_env`` values marked
``is_secret`` show as ``***``.
"""

from __future__ import annotations

import base64
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
