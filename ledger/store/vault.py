"""Crypto-shredding of ``is_secret`` runtime_env values.

A spec's ``runtime_env`` values marked ``is_secret`` are never stored in the
clear, not even inside an encrypted event: each execution that has any gets a
data key of its own, kept in the vault table beside the events (encrypted with
``LEDGER_CIPHER_KEY`` when one is configured), and the values are stored as
``enc:v1:<base64 of AES-GCM ciphertext>``. Reads decrypt them with the key.

When the execution reaches a terminal phase its key is destroyed, so the values
can never be read from the log again, while the rest of the history stays
readable and auditable. A terminal execution whose key survived a crash between
its ``Completed`` event and the key's destruction is shredded on its next read.

The table is ``ledger_secret_keys`` (``execution_id`` text primary key, ``data_key``
text), in the ledger's PostgreSQL schema or SQLite file; in memory, a dict.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import ApplicationRecorder, Cipher, ProgrammingError
from eventsourcing.utils import Environment

from ledger.contract.names import VAULT_TABLE
from ledger.domain.sealing import ENCRYPTED_PREFIX, is_sealed
from ledger.store._side_table import SideTable

TABLE = VAULT_TABLE

_STATEMENTS = {
    "create": "CREATE TABLE IF NOT EXISTS {table} "
    "(execution_id text PRIMARY KEY, data_key text NOT NULL)",
    "insert": "INSERT INTO {table} (execution_id, data_key) VALUES (?, ?) "
    "ON CONFLICT (execution_id) DO NOTHING",
    "select": "SELECT data_key FROM {table} WHERE execution_id = ?",
    "delete": "DELETE FROM {table} WHERE execution_id = ?",
}
"""The vault's statements, in SQLite's parameter style (``?`` becomes ``%s`` on PostgreSQL)."""


class SecretVault:
    """Per-execution data keys for secret values; destroying one shreds them."""

    def __init__(
        self, recorder: ApplicationRecorder, master: Cipher | None, *, create_table: bool = True
    ) -> None:
        self.recorder = recorder
        self.master = master
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()
        self._table = SideTable(recorder, TABLE, _STATEMENTS)
        if not self._table.available:
            return
        if create_table:
            self._execute("create")

    # Values.

    def seal(self, execution_id: str, spec: Any) -> None:
        """Encrypts the secret values of ``spec`` in place (creating the key if needed)."""
        secrets = [v for v in spec.runtime_env.values() if v.is_secret and v.value]
        if not secrets:
            return
        cipher = self._cipher(self._key(execution_id, create=True))
        assert cipher is not None
        for value in secrets:  # Every one, even text that happens to look sealed.
            sealed = cipher.encrypt(value.value.encode("utf-8"))
            value.value = ENCRYPTED_PREFIX + base64.b64encode(sealed).decode("ascii")

    def reveal(self, execution_id: str, spec: Any) -> None:
        """Decrypts the secret values of ``spec`` in place; blanks them if shredded."""
        sealed = [v for v in spec.runtime_env.values() if is_sealed(v)]
        if not sealed:
            return
        try:
            key = self._key(execution_id, create=False)
        except ProgrammingError:  # A role without access to the keys sees them blank.
            key = None
        cipher = self._cipher(key)
        for value in sealed:
            value.value = _open(cipher, value.value) if cipher is not None else ""

    def destroy(self, execution_id: str) -> None:
        """Destroys the execution's key: its secret values become unreadable forever."""
        if not self._table.available:
            with self._lock:
                self._memory.pop(execution_id, None)
            return
        self._execute("delete", execution_id)

    def has_key(self, execution_id: str) -> bool:
        return self._key(execution_id, create=False) is not None

    # Keys.

    def _key(self, execution_id: str, *, create: bool) -> str | None:
        if not self._table.available:
            with self._lock:
                if create and execution_id not in self._memory:
                    self._memory[execution_id] = AESCipher.create_key(32)
                return self._memory.get(execution_id)
        if create:
            self._execute("insert", execution_id, self._wrap(AESCipher.create_key(32)))
        row = self._execute("select", execution_id, fetch=True)
        return self._unwrap(row["data_key"]) if row else None

    def _wrap(self, key: str) -> str:
        if self.master is None:
            return key
        return "m:" + base64.b64encode(self.master.encrypt(key.encode("ascii"))).decode("ascii")

    def _unwrap(self, stored: str) -> str:
        if not stored.startswith("m:"):
            return stored
        if self.master is None:
            msg = "the vault's keys are encrypted: configure LEDGER_CIPHER_KEY to read them"
            raise ValueError(msg)
        return self.master.decrypt(base64.b64decode(stored[2:])).decode("ascii")

    @staticmethod
    def _cipher(key: str | None) -> AESCipher | None:
        if key is None:
            return None
        return AESCipher(Environment(env={"CIPHER_KEY": key}))

    def _execute(self, name: str, *params: str, fetch: bool = False) -> Any:
        return self._table.execute(name, *params, fetch=fetch)


def _open(cipher: AESCipher, sealed: str) -> str:
    try:
        data = base64.b64decode(sealed[len(ENCRYPTED_PREFIX) :], validate=True)
        return cipher.decrypt(data).decode("utf-8")
    except (ValueError, binascii.Error):
        return ""
