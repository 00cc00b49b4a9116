"""A wrong or missing cipher key can never poison the ledger (``ledger/store/keys.py``).

Each case failed before the store kept a record of its keys: a wrong key wrote events
nobody else could read, and no key wrote plaintext into an encrypted store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.cipher import AESCipher

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    CipherKeyMismatchError,
    ConfigurationError,
    Ledger,
    StoreNotFoundError,
    open_ledger,
)
from ledger.contract.names import KEYS_TABLE
from ledger.store.keys import check_value
from ledger.store.url import parse_url


def _resource() -> AgentExecution:
    return AgentExecution(spec=AgentExecutionSpec(agent_id="agent-1", message="hello"))


def _event_count(url: str, key: str | None) -> int:
    with open_ledger(url, cipher_key=key) as app:
        return app.recorder.max_notification_id() or 0


def _forget_record(app: Ledger) -> None:
    """Makes the store look like one written before the record existed (round 1)."""
    datastore = app.recorder.datastore  # type: ignore[attr-defined]
    table = KEYS_TABLE
    if hasattr(datastore, "schema"):
        table = f'"{datastore.schema}"."{KEYS_TABLE}"'
    with datastore.transaction(commit=True) as cursor:
        cursor.execute(f"DELETE FROM {table}")


def test_a_wrong_key_is_refused_at_open_and_writes_nothing(store_url: str) -> None:
    key, other = AESCipher.create_key(32), AESCipher.create_key(32)
    with open_ledger(store_url, cipher_key=key) as app:
        first = app.create(_resource()).id
    before = _event_count(store_url, key)
    with pytest.raises(CipherKeyMismatchError, match=r"LEDGER_CIPHER_KEY .*does not know"):
        open_ledger(store_url, cipher_key=other)
    assert _event_count(store_url, key) == before
    with open_ledger(store_url, cipher_key=key) as app:  # The store is as readable as ever.
        assert app.get(first).spec == _resource().spec


def test_no_key_on_an_encrypted_store_is_refused(store_url: str) -> None:
    key = AESCipher.create_key(32)
    with open_ledger(store_url, cipher_key=key) as app:
        app.create(_resource())
    with pytest.raises(CipherKeyMismatchError, match="encrypted and LEDGER_CIPHER_KEY is not set"):
        open_ledger(store_url)
    assert _event_count(store_url, key) == 1


def test_a_key_on_a_plaintext_store_is_refused(store_url: str) -> None:
    with open_ledger(store_url) as app:
        app.create(_resource())
    with pytest.raises(CipherKeyMismatchError, match="not encrypted"):
        open_ledger(store_url, cipher_key=AESCipher.create_key(32))
    assert _event_count(store_url, None) == 1


def test_an_unknown_old_key_is_refused(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = AESCipher.create_key(32)
    with open_ledger(store_url, cipher_key=key) as app:
        app.create(_resource())
    monkeypatch.setenv("LEDGER_CIPHER_OLD_KEYS", AESCipher.create_key(32))
    with pytest.raises(CipherKeyMismatchError, match="LEDGER_CIPHER_OLD_KEYS"):
        open_ledger(store_url, cipher_key=key)


def test_rotation_registers_the_new_key_with_a_known_one(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = AESCipher.create_key(32), AESCipher.create_key(32)
    with open_ledger(store_url, cipher_key=old) as app:
        first = app.create(_resource()).id
        assert app.keys.add(new) == check_value(new)
        assert [c for c, _ in app.keys.known()] == sorted([check_value(old), check_value(new)])
    monkeypatch.setenv("LEDGER_CIPHER_OLD_KEYS", old)
    with open_ledger(store_url, cipher_key=new) as app:
        second = app.create(_resource()).id
        assert app.get(first).spec == app.get(second).spec


def test_a_store_without_a_record_gets_one_from_its_events(store_url: str) -> None:
    key = AESCipher.create_key(32)
    with open_ledger(store_url, cipher_key=key) as app:
        app.create(_resource())
        _forget_record(app)
        assert app.keys.known() == []
    # A wrong key opens none of its events: refused, and nothing is recorded.
    with pytest.raises(CipherKeyMismatchError, match="none of the configured keys"):
        open_ledger(store_url, cipher_key=AESCipher.create_key(32))
    with pytest.raises(CipherKeyMismatchError, match="encrypted and LEDGER_CIPHER_KEY"):
        open_ledger(store_url)
    with open_ledger(store_url, cipher_key=key) as app:  # The right key: recorded now.
        assert [c for c, _ in app.keys.known()] == [check_value(key)]


def test_a_malformed_key_is_a_configuration_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="LEDGER_CIPHER_KEY is not an AES key"):
        parse_url(sqlite_url, cipher_key="notakey")
    monkeypatch.setenv("LEDGER_CIPHER_OLD_KEYS", "still not a key")
    with pytest.raises(ConfigurationError, match="LEDGER_CIPHER_OLD_KEYS is not an AES key"):
        parse_url(sqlite_url, cipher_key=AESCipher.create_key(32))


def test_a_check_value_never_reveals_the_key() -> None:
    key = AESCipher.create_key(32)
    value = check_value(key)
    assert len(value) == 16
    assert value not in key
    assert check_value(key) == value  # Stable: the store compares it across processes.


def test_a_schema_name_is_checked_when_the_url_is_read() -> None:
    with pytest.raises(ConfigurationError, match="schema 'Bad-Schema' is not a plain"):
        parse_url("postgresql://postgres@127.0.0.1:5432/postgres?schema=Bad-Schema")


def test_an_empty_library_variable_means_unset(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_CONNECT_TIMEOUT", "")  # As the library reads it.
    with open_ledger(pg_url) as app:
        assert app.create(_resource()).version == 1
    monkeypatch.setenv("POSTGRES_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="POSTGRES_CONNECT_TIMEOUT='soon' is not a number"):
        open_ledger(pg_url)


def test_a_read_never_creates_a_store(store_url: str, tmp_path: Path) -> None:
    from ledger.application import open_ledger_with

    if store_url.startswith("sqlite"):
        store_url = "sqlite:///" + str(tmp_path / "no-such-dir" / "x.db")
    with pytest.raises(StoreNotFoundError, match="no ledger at"):
        open_ledger_with(parse_url(store_url), must_exist=True)
    assert not (tmp_path / "no-such-dir").exists()
    with open_ledger(store_url) as app:  # A write creates it; then reads find it.
        app.create(_resource())
    with open_ledger_with(parse_url(store_url), must_exist=True) as app:
        assert app.recorder.max_notification_id() == 1


def test_an_sqlite_folder_that_cannot_be_made_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot create the folder '/proc/nope'"):
        open_ledger("sqlite:////proc/nope/x.db")


def test_encryption_turned_on_for_a_plaintext_store(store_url: str) -> None:
    """Nothing is rewritten: events stored in the clear stay so and are still read, new
    ones are encrypted, and from then on the store refuses to be opened without a key."""
    from datetime import UTC, datetime

    from eventsourcing.persistence import Tracking

    from projections.dispatch.delivery import Delivery
    from projections.dispatch.log import DispatcherLog
    from projections.views import Views

    config = parse_url(store_url)
    with open_ledger(store_url) as app:
        before = app.create(_resource()).id
        app.complete(before, {"answer": 42})
    key = AESCipher.create_key(32)
    log = DispatcherLog(config.component_env("dispatcher"))
    try:
        delivery = Delivery.open(
            before,
            kind="AgentExecution",
            phase=3,
            completed_at=datetime.now(UTC),
            has_callback=False,
            ledger_position=2,
        )
        log.record([delivery], Tracking("Ledger", 2))
        # Both logs are opened first (on PostgreSQL they share one record), then turned.
        with open_ledger(store_url) as app:
            assert app.keys.encrypt(key) == check_value(key)
            assert log.keys.encrypt(key) == check_value(key)  # SQLite: its own file.
    finally:
        log.close()
    with pytest.raises(CipherKeyMismatchError, match="encrypted and LEDGER_CIPHER_KEY"):
        open_ledger(store_url)
    with open_ledger(store_url, cipher_key=key) as app:
        after = app.create(_resource()).id
        assert app.get(before).spec == app.get(after).spec
        states = [n.state for n in app.recorder.select_notifications(1, 10)]
    assert [s[:2] == b'{"' for s in states] == [True, True, False]  # Old clear, new not.
    keyed = parse_url(store_url, cipher_key=key)
    log = DispatcherLog(keyed.component_env("dispatcher"))
    try:
        found = log.delivery(before)
        assert found is not None
        assert found.ledger_position == 2
    finally:
        log.close()
    views = Views(keyed)
    try:
        views.rebuild("status")
        assert {row.id for row in views.status.snapshot()} == {before, after}
    finally:
        views.close()
