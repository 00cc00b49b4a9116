"""The store's own record of its encryption: which cipher keys may write its events.

A store remembers, in a table of its own (``ledger_keys``, beside the events), whether
its events are encrypted and a *check value* for each key that may write them: an
HMAC-SHA256 of a fixed label under the key, which identifies a key without revealing
it. Opening a ledger compares the configured keys with that record before anything is
read or written, and refuses, with :class:`~ledger.contract.errors.CipherKeyMismatchError`:

- a key on a store whose events are not encrypted,
- no key on a store whose events are,
- a current key (``LEDGER_CIPHER_KEY``) or an old key (``LEDGER_CIPHER_OLD_KEYS``)
  that the store does not know.

So one misconfigured process can never write events that its peers cannot read. A new
key is registered by :meth:`StoreKeys.add` (``ledger keys add``), run with a key the
store already knows; then it can become ``LEDGER_CIPHER_KEY`` (rotation).

A store written before this record existed (round 1) gets it on its first open: its
mode is read off its first and last events (JSON or not), and the configured keys
that open them are the ones it knows. A store opened by a role that may not create
tables is checked the same way, without recording anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder, ProgrammingError

from ledger.contract.errors import CipherKeyMismatchError, ConfigurationError
from ledger.contract.names import KEYS_TABLE
from ledger.store._side_table import SideTable
from ledger.store.cipher import RotatingAESCipher

_CHECK_LABEL = b"execution-ledger key check v1"
_ENCRYPTION = "encryption"
_PLAINTEXT_HISTORY = "plaintext_history"
_KEY_PREFIX = "key:"

_STATEMENTS = {
    "create": "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, value text NOT NULL)",
    "insert": "INSERT INTO {table} (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
    "upsert": "INSERT INTO {table} (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    "select": "SELECT name, value FROM {table}",
}


def decode_key(key: str, *, setting: str = "LEDGER_CIPHER_KEY") -> bytes:
    """The raw bytes of an AES key given as base64 (``ledger keygen``), or
    :class:`~ledger.contract.errors.ConfigurationError` naming ``setting``."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (16, 24, 32):
        raise ConfigurationError(
            f"{setting} is not an AES key: expected the base64 of 16, 24 or 32 bytes, "
            "as `ledger keygen` prints"
        )
    return raw


def check_value(key: str) -> str:
    """The key's check value: 16 hex digits of an HMAC of a fixed label under it."""
    digest = hmac.new(decode_key(key), _CHECK_LABEL, hashlib.sha256).hexdigest()
    return digest[:16]


@dataclass(frozen=True)
class KeyRecord:
    """What a store knows of its encryption."""

    encrypted: bool
    known: frozenset[str]
    """Check values of the keys that may write and read its events."""
    plaintext_history: bool = False
    """Encryption was turned on after events were stored in the clear: those stay as
    they are (nothing is rewritten) and are read as they are."""


class StoreKeys:
    """The ``ledger_keys`` record of one ledger store (no record in memory stores)."""

    def __init__(self, recorder: ApplicationRecorder, *, create_table: bool) -> None:
        self.recorder = recorder
        self._table = SideTable(recorder, KEYS_TABLE, _STATEMENTS)
        self._writable = create_table
        if self._table.available and create_table:
            self._table.execute("create")

    def check(self, key: str | None, old_keys: Sequence[str]) -> KeyRecord:
        """Refuses settings that do not fit the store; records them on a store's first
        open (``key``: ``LEDGER_CIPHER_KEY``, ``old_keys``: ``LEDGER_CIPHER_OLD_KEYS``)."""
        if not self._table.available:
            return KeyRecord(encrypted=key is not None, known=frozenset())
        keys = [k for k in (key, *old_keys) if k]
        record = self._read()
        if record is None:
            record = self._first_record(key, keys)
        wanted = {check_value(k): k for k in keys}
        if not record.encrypted:
            if keys:
                raise CipherKeyMismatchError(
                    "this store's events are not encrypted, but LEDGER_CIPHER_KEY is set: "
                    "unset LEDGER_CIPHER_KEY and LEDGER_CIPHER_OLD_KEYS for this store"
                )
            return record
        if key is None:
            raise CipherKeyMismatchError(
                "this store's events are encrypted and LEDGER_CIPHER_KEY is not set: set "
                f"it to a key of this store (check values: {_listed(record.known)})"
            )
        unknown = sorted(c for c in wanted if c not in record.known)
        if unknown:
            which = "LEDGER_CIPHER_KEY" if check_value(key) in unknown else "LEDGER_CIPHER_OLD_KEYS"
            raise CipherKeyMismatchError(
                f"{which} holds a key this store does not know (check value "
                f"{', '.join(unknown)}; the store knows {_listed(record.known)}): "
                "register a new key with `ledger keys add`, run with a known key"
            )
        return record

    def add(self, new_key: str) -> str:
        """Registers ``new_key`` (the caller opened the store with a known key);
        returns its check value."""
        value = check_value(new_key)
        self._table.execute("insert", _KEY_PREFIX + value, _now())
        return value

    def encrypt(self, key: str) -> str:
        """Turns encryption on for a store whose events are not encrypted (opened without
        a key): from now on its events are written under ``key``; those already stored
        stay as they are and are still read. Returns the key's check value. Idempotent:
        a store already encrypted under ``key`` is left as it is."""
        value = check_value(key)
        record = self._read()
        if record is not None and record.encrypted:
            if value in record.known:
                return value
            raise CipherKeyMismatchError(
                "this store's events are already encrypted under other keys "
                f"({_listed(record.known)}): register a new key with `ledger keys add`"
            )
        self._table.execute("insert", _KEY_PREFIX + value, _now())
        self._table.execute("upsert", _PLAINTEXT_HISTORY, "yes")
        self._table.execute("upsert", _ENCRYPTION, "on")
        return value

    def known(self) -> list[tuple[str, str]]:
        """The known keys' check values, with when each was registered."""
        rows = self._table.execute("select", fetch="all") or []
        return sorted(
            (str(name)[len(_KEY_PREFIX) :], str(value))
            for name, value in (_pair(r) for r in rows)
            if str(name).startswith(_KEY_PREFIX)
        )

    def _read(self) -> KeyRecord | None:
        try:
            rows = self._table.execute("select", fetch="all") or []
        except ProgrammingError:  # No table yet and no right to create one.
            return None
        values = dict(_pair(r) for r in rows)
        if _ENCRYPTION not in values:
            return None
        known = frozenset(n[len(_KEY_PREFIX) :] for n in values if n.startswith(_KEY_PREFIX))
        return KeyRecord(
            encrypted=values[_ENCRYPTION] == "on",
            known=known,
            plaintext_history=values.get(_PLAINTEXT_HISTORY) == "yes",
        )

    def _first_record(self, key: str | None, keys: list[str]) -> KeyRecord:
        """The record of a store that has none: from its events, or from the settings
        for an empty store; written down when this role may."""
        states = self._edge_states()
        if not states:
            encrypted, known = key is not None, ({check_value(k) for k in keys} if key else set())
        elif all(_is_plain_json(s) for s in states):
            encrypted, known = False, set()
        else:
            encrypted, known = True, {check_value(k) for k in keys if _opens(k, states)}
            if not keys:
                raise CipherKeyMismatchError(
                    "this store's events are encrypted and LEDGER_CIPHER_KEY is not set: "
                    "set it (and LEDGER_CIPHER_OLD_KEYS) to the store's keys"
                )
            if not known:
                raise CipherKeyMismatchError(
                    "this store's events are encrypted and none of the configured keys "
                    "opens them: set LEDGER_CIPHER_KEY (and LEDGER_CIPHER_OLD_KEYS) to its keys"
                )
        if self._writable:
            self._table.execute("insert", _ENCRYPTION, "on" if encrypted else "off")
            for value in sorted(known):
                self._table.execute("insert", _KEY_PREFIX + value, _now())
            stored = self._read()
            if stored is not None:  # Another process may have recorded it first.
                return stored
        return KeyRecord(encrypted=encrypted, known=frozenset(known))

    def _edge_states(self) -> list[bytes]:
        """The stored states of the first and last events (none in an empty store)."""
        first = self.recorder.select_notifications(start=None, limit=1)
        if not first:
            return []
        last_id = self.recorder.max_notification_id() or first[0].id
        last = self.recorder.select_notifications(start=last_id, limit=1)
        return [n.state for n in (*first, *last)]


def _opens(key: str, states: list[bytes]) -> bool:
    from eventsourcing.cipher import AESCipher
    from eventsourcing.utils import Environment

    cipher = AESCipher(Environment(env={"CIPHER_KEY": key}))
    for state in states:
        try:
            cipher.decrypt(state)
        except ValueError:
            continue
        return True
    return False


def _is_plain_json(state: bytes) -> bool:
    return state[:2] == b'{"'


def _pair(row: Any) -> tuple[str, str]:
    if isinstance(row, dict):
        return str(row["name"]), str(row["value"])
    return str(row[0]), str(row[1])


def _listed(known: frozenset[str]) -> str:
    return ", ".join(sorted(known)) or "none"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_application_keys(app: Application[Any]) -> StoreKeys:
    """Checks the cipher settings of an application of the ledger's (the ledger, the
    dispatcher's log) against its store's record, before it reads or writes anything;
    returns the record, for :meth:`StoreKeys.add` and :meth:`StoreKeys.encrypt`."""
    creates_tables = bool(getattr(app.factory, "env_create_table", lambda: True)())
    keys = StoreKeys(app.recorder, create_table=creates_tables)
    old_keys = [k for k in (app.env.get("CIPHER_OLD_KEYS") or "").split(",") if k.strip()]
    record = keys.check(app.env.get("CIPHER_KEY") or None, old_keys)
    cipher = app.mapper.cipher
    if isinstance(cipher, RotatingAESCipher):
        cipher.plaintext_history = record.plaintext_history
    return keys
