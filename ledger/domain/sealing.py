"""Sealed secret values: how a spec's ``is_secret`` runtime_env values look at rest.

The store's vault (:mod:`ledger.store.vault`) seals each secret value as
``enc:v1:<base64 of AES-GCM ciphertext>`` under a data key of the execution's own;
the domain only needs to recognise a sealed value, which this module does without
any key or store.
"""

from __future__ import annotations

from typing import Any

ENCRYPTED_PREFIX = "enc:v1:"
"""How an encrypted secret value starts in a stored spec."""


def is_sealed(value: Any) -> bool:
    """Whether a runtime_env value was sealed by the vault (secret values only)."""
    return bool(value.is_secret) and str(value.value).startswith(ENCRYPTED_PREFIX)
