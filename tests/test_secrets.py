"""Secrets at rest: crypto-shredding of is_secret values, and cipher key rotation."""

from __future__ import annotations

import base64
import re
import sqlite3
from functools import partial
from pathlib import Path

import psycopg
import pytest
from eventsourcing.cipher import AESCipher

from ledger import (
    CipherKeyMismatchError,
    CreateConflictError,
    UnreadableEventError,
    open_ledger,
)
from ledger.application import Ledger
from ledger.domain.sealing import ENCRYPTED_PREFIX
from tests.support.builders import agent_execution, secret_env

SECRET = "sk-live-4f7e1b2c9d"


_resource = partial(
    agent_execution,
    agent_id="a",
    message="m",
    env=secret_env({"API_KEY": SECRET}, {"MODE": "fast"}),
)


def _raw_rows(app: Ledger, url: str) -> bytes:
    """Everything the ledger's store holds (events and vault), with every base64
    payload inside the JSON state decoded beside it, so protobuf fields are visible."""
    raw = _stored(url)
    decoded = [base64.b64decode(m) for m in re.findall(rb'"_data_":"([A-Za-z0-9+/=]+)"', raw)]
    return raw + b"".join(decoded)


def _stored(url: str) -> bytes:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT state FROM stored_events").fetchall()
            keys = conn.execute("SELECT data_key FROM ledger_secret_keys").fetchall()
        return b"".join(bytes(r[0]) for r in rows) + "".join(k[0] for k in keys).encode()
    schema = url.rsplit("schema=", 1)[1]
    base = url.split("?", 1)[0]
    with psycopg.connect(base) as conn:
        rows = conn.execute(f'SELECT state FROM "{schema}".ledger_events').fetchall()
        keys = conn.execute(f'SELECT data_key FROM "{schema}".ledger_secret_keys').fetchall()
    return b"".join(bytes(r[0]) for r in rows) + "".join(k[0] for k in keys).encode()


def test_secret_values_are_sealed_at_rest_and_revealed_on_read(
    ledger_app: Ledger, store_url: str
) -> None:
    record = ledger_app.create(_resource())
    assert SECRET.encode() not in _raw_rows(ledger_app, store_url)
    assert b"fast" in _raw_rows(ledger_app, store_url)  # the scan sees plain values
    env = ledger_app.get(record.id).spec.runtime_env
    assert env["API_KEY"].value == SECRET
    assert env["MODE"].value == "fast"
    stored = ledger_app.history(record.id)[0].event
    assert stored.spec.runtime_env["API_KEY"].value.startswith(ENCRYPTED_PREFIX)  # type: ignore[attr-defined]


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_terminal_phase_shreds_secret_values(ledger_app: Ledger, end: str) -> None:
    record = ledger_app.create(_resource())
    assert ledger_app.vault.has_key(record.id)
    if end == "complete":
        ledger_app.complete(record.id)
    elif end == "fail":
        ledger_app.fail(record.id, "boom")
    else:
        ledger_app.cancel(record.id)
    assert not ledger_app.vault.has_key(record.id)
    env = ledger_app.get(record.id).spec.runtime_env
    assert env["API_KEY"].value == ""
    assert env["API_KEY"].is_secret
    assert env["MODE"].value == "fast"  # the rest stays auditable
    assert [e.type for e in ledger_app.history(record.id)] == ["Created", "Completed"]


def test_idempotent_create_with_secrets_before_and_after_shredding(ledger_app: Ledger) -> None:
    first = ledger_app.create(_resource("aex-withsecret"))
    assert ledger_app.create(_resource("aex-withsecret")).version == first.version
    other = _resource("aex-withsecret")
    other.spec.runtime_env["API_KEY"].value = "another"
    with pytest.raises(CreateConflictError):
        ledger_app.create(other)
    ledger_app.complete("aex-withsecret")
    assert ledger_app.create(_resource("aex-withsecret")).version == 2


def test_a_key_left_behind_by_a_crash_is_shredded_on_read(ledger_app: Ledger) -> None:
    record = ledger_app.create(_resource())
    key_before = ledger_app.vault._key(record.id, create=False)
    ledger_app.complete(record.id)
    # What a crash between the Completed event and the key's destruction leaves:
    ledger_app.vault._execute("insert", record.id, key_before or "")
    assert ledger_app.vault.has_key(record.id)
    assert ledger_app.get(record.id).spec.runtime_env["API_KEY"].value == ""
    assert not ledger_app.vault.has_key(record.id)


def test_cipher_key_rotation_reads_events_written_under_old_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "sqlite:///" + str(tmp_path / "rotate.db")
    old_key, new_key = AESCipher.create_key(32), AESCipher.create_key(32)
    with open_ledger(url, cipher_key=old_key) as app:
        before = app.create(_resource()).id
    # A key the store does not know is refused at open time, before any write.
    with pytest.raises(CipherKeyMismatchError, match="does not know"):
        open_ledger(url, cipher_key=new_key)
    with open_ledger(url, cipher_key=old_key) as app:  # Registered with a known key.
        app.keys.add(new_key)
    # Without the old key the old events cannot be read: the rotation needs it.
    with (
        open_ledger(url, cipher_key=new_key) as app,
        pytest.raises(UnreadableEventError, match="LEDGER_CIPHER_KEY"),
    ):
        app.get(before)
    monkeypatch.setenv("LEDGER_CIPHER_OLD_KEYS", old_key)
    with open_ledger(url, cipher_key=new_key) as app:
        after = app.create(_resource()).id
        assert app.get(before).spec.runtime_env["API_KEY"].value == SECRET
        assert app.get(after).spec.runtime_env["API_KEY"].value == SECRET
    monkeypatch.delenv("LEDGER_CIPHER_OLD_KEYS")
    with open_ledger(url, cipher_key=new_key) as app:
        assert app.read(after).version == 1  # new events need only the new key
