"""What the :class:`~ledger.application.Ledger`'s writes share: bounded retries of a
conflicting write, the store's refusals and undecodable events as the ledger's typed
errors, and comparing specs for an idempotent create."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from eventsourcing.persistence import ProgrammingError
from google.protobuf.message import Message

from ledger.contract.errors import PermissionDeniedError, UnreadableEventError

WRITE_RETRY_SECONDS = 30.0
"""How long a write without ``expected_version`` keeps re-reading and retrying after
losing races (with a short random pause between tries) before it gives up."""


def retries() -> Iterator[int]:
    """Tries until :data:`WRITE_RETRY_SECONDS` pass, pausing randomly between them."""
    deadline = time.monotonic() + WRITE_RETRY_SECONDS
    attempt = 0
    while True:
        yield attempt
        attempt += 1
        if time.monotonic() > deadline:
            return
        time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311


def denied_or(error: ProgrammingError, execution_id: str) -> Exception:
    """A permission refusal as a :class:`PermissionDeniedError`; anything else unchanged."""
    if "permission denied" in str(error):
        return PermissionDeniedError(
            f"execution {execution_id!r}: the store refused this role: {error}".strip()
        )
    return error


def unreadable(execution_id: str, error: Exception) -> UnreadableEventError:
    return UnreadableEventError(
        f"execution {execution_id!r}: a stored event cannot be decoded ({error}); "
        "check LEDGER_CIPHER_KEY and LEDGER_CIPHER_OLD_KEYS"
    )


def comparable(spec: Message, without_secrets: bool) -> bytes:
    """The spec's bytes, with secret values left out once they are shredded."""
    if without_secrets:
        values: Any = type(spec)()
        values.CopyFrom(spec)
        for value in values.runtime_env.values():
            if value.is_secret:
                value.value = ""
        spec = values
    return spec.SerializeToString(deterministic=True)
