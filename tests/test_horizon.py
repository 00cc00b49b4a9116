"""The readable head (``ledger.store.horizon``): its bookkeeping, and the facts it rests on."""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.store import horizon as horizon_module
from ledger.store.horizon import MAX_PENDING, Observation, ReadHorizon
from ledger.store.recorder import LedgerPostgresApplicationRecorder
from tests.support.servers import POSTGRES_URL
from tests.test_recorder import drop_schema, new_datastore, new_schema, require_postgres


def horizon() -> ReadHorizon:
    return ReadHorizon(cast(Any, None), "s", "t")  # Bookkeeping only: never observes.


def test_an_observation_is_readable_at_once_when_nothing_runs() -> None:
    h = horizon()
    h._take(Observation(committed=10, next_xid=100, oldest_running=100))
    assert h.readable == 10


def test_an_observation_waits_for_the_transactions_running_then() -> None:
    h = horizon()
    h._take(Observation(committed=10, next_xid=100, oldest_running=97))
    assert h.readable is None
    h._take(Observation(committed=12, next_xid=103, oldest_running=99))
    assert h.readable is None  # 99 may hold an id below 10.
    h._take(Observation(committed=15, next_xid=106, oldest_running=100))
    assert h.readable == 10  # Everything running at the first has ended; 103 not yet.
    h._take(Observation(committed=15, next_xid=106, oldest_running=104))
    assert h.readable == 12
    h._take(Observation(committed=20, next_xid=110, oldest_running=110))
    assert h.readable == 20


def test_the_readable_head_never_goes_back_and_pending_stays_bounded() -> None:
    h = horizon()
    h._take(Observation(committed=5, next_xid=10, oldest_running=10))
    for n in range(3 * MAX_PENDING):
        h._take(Observation(committed=6 + n, next_xid=11 + n, oldest_running=9))
        assert h.readable == 5
    assert len(h._pending) <= MAX_PENDING
    h._take(Observation(committed=4, next_xid=500, oldest_running=500))  # An older view.
    assert h.readable == 6 + 3 * MAX_PENDING - 1


@pytest.mark.postgres
def test_a_running_transaction_above_the_snapshot_xmax_still_holds_the_head_back() -> None:
    """Why N is read with age(): a transaction that took its id after the last one
    that completed is not in the snapshot's xip nor below its xmax, yet it runs
    (and may have drawn an id below a committed one)."""
    require_postgres()
    schema = new_schema()
    datastore = new_datastore(schema, "text", pool_size=2)
    try:
        recorder = LedgerPostgresApplicationRecorder(datastore, events_table_name="events")
        recorder.create_table()
        with psycopg.connect(POSTGRES_URL) as first, psycopg.connect(POSTGRES_URL) as second:
            first.execute("SELECT pg_current_xact_id()")
            second.execute("SELECT pg_current_xact_id()")
            first.commit()  # The last completed: second's id is now >= the xmax.
            recorder.insert_events([StoredEvent("aex-1", 1, "t", b"s")])
            observation = recorder.horizon.observe()
            assert observation.oldest_running < observation.next_xid, observation
            assert recorder.select_notifications(None, 10) == []  # Held back by second.
            second.rollback()
        assert recorder.max_notification_id() == 1
    finally:
        datastore.close()
        drop_schema(schema)


@pytest.mark.postgres
def test_a_wait_without_limit_says_what_it_waits_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_postgres()
    monkeypatch.setattr(horizon_module, "WARN_AFTER", 0.3)
    schema = new_schema()
    datastore = new_datastore(schema, "text", pool_size=2)
    try:
        recorder = LedgerPostgresApplicationRecorder(datastore, events_table_name="events")
        recorder.create_table()
        with psycopg.connect(POSTGRES_URL) as held:
            held.execute("SELECT pg_current_xact_id()")
            recorder.insert_events([StoredEvent("aex-1", 1, "t", b"s")])
            timer = threading.Timer(1.5, held.rollback)
            timer.start()
            with caplog.at_level(logging.WARNING, logger="ledger.store.horizon"):
                assert recorder.horizon.head(None) == 1  # Once the held one has ended.
            timer.join()
        assert any("waited" in r.getMessage() and "pid" in r.getMessage() for r in caplog.records)
    finally:
        datastore.close()
        drop_schema(schema)
