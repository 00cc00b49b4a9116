"""Poisoned completions: the dispatcher parks them with the reason and carries on.

A ``Completed`` whose execution cannot be read (an event that cannot be decrypted,
one that decrypts to something that is not an event, a topic whose class is gone)
is parked as ``poisoned``, with the error as its detail: never skipped silently,
never stalling the dispatcher, never called. A restart leaves it parked without
recording it again; once the execution reads again, a retry of the parked
deliveries settles it; ``ledger dispatcher parked`` lists it with its reason.

Each store's events are damaged in place with SQL, as a wrong key, a bad backup or
a deleted class would leave them. Real stores (SQLite, PostgreSQL) and a real
Temporal dev server (the dispatcher's client; no call reaches it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.cipher import AESCipher
from psycopg import sql
from temporalio.client import Client

from ledger.application import Ledger, open_ledger
from ledger.contract.names import LEDGER_EVENTS_TABLE
from ledger.store.connections import connect
from ledger.store.url import parse_url
from projections.dispatch.delivery import POISONED, Call, Delivery, Outcome
from projections.dispatch.dispatcher import Dispatcher
from projections.dispatch.log import DispatcherLog
from tests.support.builders import agent_execution

pytestmark = pytest.mark.temporal

LEDGER = str(Path(sys.executable).parent / "ledger")
GONE_TOPIC = "ledger.domain.gone:Execution.Created"


def _set_event(
    url: str, key: str, execution_id: str, version: int, column: str, value: Any
) -> None:
    """Overwrites one stored event's ``column`` (``state`` or ``topic``) in place."""
    config = parse_url(url, cipher_key=key)
    if config.is_sqlite:
        with sqlite3.connect(config.env["SQLITE_DBNAME"]) as db:
            db.execute(
                f"UPDATE stored_events SET {column} = ? "
                "WHERE originator_id = ? AND originator_version = ?",
                (value, execution_id, version),
            )
        return
    table = sql.Identifier(config.env["POSTGRES_SCHEMA"], LEDGER_EVENTS_TABLE)
    with connect(config) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET {} = %s WHERE originator_id = %s AND originator_version = %s"
            ).format(table, sql.Identifier(column)),
            (value, execution_id, version),
        )


def _state(ledger: Ledger, execution_id: str, version: int) -> bytes:
    (stored,) = ledger.recorder.select_events(execution_id, gt=version - 1, lte=version)
    return stored.state


def _deliveries(url: str, key: str) -> tuple[dict[str, Delivery], int, int | None]:
    log = DispatcherLog(parse_url(url, cipher_key=key).component_env("dispatcher"))
    try:
        events = log.recorder.select_notifications(start=1, limit=1_000_000)
        ids = {str(n.originator_id) for n in events}
        return log.deliveries(ids), len(events), log.position()
    finally:
        log.close()


async def _dispatch(url: str, key: str, address: str, *, retry_parked: bool = False) -> None:
    client = await Client.connect(address)
    dispatcher = Dispatcher(
        parse_url(url, cipher_key=key), client, poll_interval=0.05, watch_callers=False
    )
    try:
        if retry_parked:
            await dispatcher.retry_parked()
        else:
            await asyncio.wait_for(dispatcher.run(until_caught_up=True), 120)
    finally:
        await asyncio.to_thread(dispatcher.close)


def test_unreadable_completions_are_parked_as_poisoned_and_the_rest_delivered(
    store_url: str, temporal_address: str
) -> None:
    key = AESCipher.create_key(32)
    token = b"a-token-nobody-waits-for"  # Never called: its execution is unreadable.
    with open_ledger(store_url, cipher_key=key) as ledger:
        ids = {}
        for name in ("undecryptable", "undecodable", "class_gone", "healthy"):
            with_token = name != "healthy"
            resource = agent_execution(token=token) if with_token else agent_execution()
            ids[name] = ledger.create(resource).id
            ledger.complete(ids[name], {"answer": name})
        created_topic = ledger.recorder.select_events(ids["class_gone"], lte=1)[0].topic
        damaged = bytearray(_state(ledger, ids["undecryptable"], 2))
        damaged[len(damaged) // 2] ^= 0xFF  # The Completed event: its MAC no longer holds.
        not_json = (
            ledger.mapper.cipher.encrypt(b"\x00 not an event") if ledger.mapper.cipher else b""
        )
    assert not_json, "the store is encrypted"
    _set_event(store_url, key, ids["undecryptable"], 2, "state", bytes(damaged))
    _set_event(store_url, key, ids["undecodable"], 1, "state", not_json)
    _set_event(store_url, key, ids["class_gone"], 1, "topic", GONE_TOPIC)
    with open_ledger(store_url, cipher_key=key) as ledger:
        head = ledger.recorder.max_notification_id()

    asyncio.run(_dispatch(store_url, key, temporal_address))

    deliveries, events, position = _deliveries(store_url, key)
    assert position == head  # Not stalled: the position went past every poisoned one.
    assert deliveries[ids["healthy"]].outcome is Outcome.NO_CALLBACK
    poisoned = [ids["undecryptable"], ids["undecodable"], ids["class_gone"]]
    for execution_id in poisoned:
        delivery = deliveries[execution_id]
        assert delivery.outcome is Outcome.PARKED, execution_id
        assert delivery.parked_reason == POISONED, execution_id
        assert delivery.attempts == 0, execution_id  # Never called.
        assert delivery.detail, execution_id  # The error, for the operator.
    assert "ledger.domain.gone" in deliveries[ids["class_gone"]].detail

    # A restart retries the parked ones: still unreadable, they stay as they are.
    asyncio.run(_dispatch(store_url, key, temporal_address))
    assert _deliveries(store_url, key)[1] == events

    # The operator's list says why each is parked.
    listed = subprocess.run(
        [LEDGER, "dispatcher", "parked", "--json"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "LEDGER_URL": store_url, "LEDGER_CIPHER_KEY": key},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["execution_id"] for r in rows) == sorted(poisoned)
    assert {r["reason"] for r in rows} == {POISONED}
    table = subprocess.run(
        [LEDGER, "dispatcher", "parked"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "LEDGER_URL": store_url, "LEDGER_CIPHER_KEY": key, "COLUMNS": "200"},
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(POISONED) == 3, table.stdout

    # The class is back: a retry reads the execution and settles its delivery (the
    # token is unknown to Temporal: rejected), the others stay parked.
    _set_event(store_url, key, ids["class_gone"], 1, "topic", created_topic)
    asyncio.run(_dispatch(store_url, key, temporal_address, retry_parked=True))
    deliveries = _deliveries(store_url, key)[0]
    restored = deliveries[ids["class_gone"]]
    assert restored.attempts == 1
    assert restored.outcome in (Outcome.REJECTED, Outcome.STALE), restored.outcome
    for execution_id in (ids["undecryptable"], ids["undecodable"]):
        assert deliveries[execution_id].parked_reason == POISONED


def test_a_parked_event_recorded_before_the_reason_existed_reads_as_retries_exhausted(
    sqlite_url: str,
) -> None:
    """Stored ``Parked`` events have no ``reason``: they stay readable."""
    log = DispatcherLog(parse_url(sqlite_url).component_env("dispatcher"))
    try:
        delivery = Delivery.open(
            "aex-old",
            kind="AgentExecution",
            phase=3,
            completed_at=datetime.now(UTC),
            has_callback=True,
            ledger_position=1,
        )
        delivery.attempt(Call.COMPLETE)
        delivery.resolve(Outcome.PARKED, call="complete", grpc_status="UNAVAILABLE")
        log.save(delivery)
        path = parse_url(sqlite_url).component_env("dispatcher")["SQLITE_DBNAME"]
        with sqlite3.connect(path) as db:
            (state,) = db.execute(
                "SELECT state FROM stored_events WHERE originator_version = 3"
            ).fetchone()
            old = json.loads(state)
            old.pop("reason")
            db.execute(
                "UPDATE stored_events SET state = ? WHERE originator_version = 3",
                (json.dumps(old).encode(),),
            )
        assert log.deliveries(["aex-old"])["aex-old"].parked_reason == "retries_exhausted"
    finally:
        log.close()


def test_listing_parked_deliveries_creates_nothing(pg_url: str) -> None:
    """``ledger dispatcher parked`` on a store no dispatcher ever followed: an empty
    list, and the dispatcher's tables still do not exist (a read writes nothing)."""
    with open_ledger(pg_url) as ledger:
        ledger.create(agent_execution())
    schema = pg_url.rpartition("schema=")[2]
    before = _tables(pg_url, schema)
    listed = subprocess.run(
        [LEDGER, "dispatcher", "parked", "--json"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "LEDGER_URL": pg_url},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert _tables(pg_url, schema) == before


def _tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url.partition("?")[0]) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {row[0] for row in rows}
