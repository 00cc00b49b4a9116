"""Encryption at rest with key rotation, on the library's AES cipher.

``LEDGER_CIPHER_KEY`` (``ledger keygen``) is the current key: every event the
ledger stores from now on is encrypted with it (AES-256-GCM, the
``eventsourcing`` library's :class:`~eventsourcing.cipher.AESCipher`).

Rotation: stored events are never rewritten, so a new key must still read what
old keys wrote. Put the new key in ``LEDGER_CIPHER_KEY`` and the old ones,
comma-separated, in ``LEDGER_CIPHER_OLD_KEYS``: new events are encrypted with the
new key, and reading tries the current key, then each old one (GCM's tag tells
a wrong key from a right one). Keep an old key as long as any event it encrypted
must stay readable.
"""

from __future__ import annotations

from base64 import b64decode

from Crypto.Cipher import AES
from eventsourcing.cipher import AESCipher
from eventsourcing.utils import Environment

CIPHER_OLD_KEYS = "CIPHER_OLD_KEYS"


class RotatingAESCipher(AESCipher):
    """AES-GCM with one key for encryption and older keys still accepted for decryption."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        old = environment.get(CIPHER_OLD_KEYS) or ""
        self.old_keys = [b64decode(k.strip()) for k in old.split(",") if k.strip()]
        for key in self.old_keys:
            AESCipher.check_key_size(len(key))

    plaintext_history = False
    """Set when the store's record says encryption was turned on after events had been
    stored in the clear (:mod:`ledger.store.keys`): those are read as they are."""

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypts with the current key, else with each old key (thread-safe)."""
        try:
            return super().decrypt(ciphertext)
        except ValueError:
            if self.plaintext_history and ciphertext[:2] == b'{"':
                return ciphertext  # An event stored before encryption was turned on.
            if not self.old_keys:
                raise
        nonce, tag, encrypted = ciphertext[:12], ciphertext[12:28], ciphertext[28:]
        for key in self.old_keys:
            cipher = AES.new(key, AES.MODE_GCM, nonce)
            try:
                plaintext: bytes = cipher.decrypt_and_verify(encrypted, tag)
            except ValueError:
                continue
            return plaintext
        msg = "Cipher text is damaged, or was encrypted with a key that is not configured"
        raise ValueError(msg)
