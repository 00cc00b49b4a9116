"""``EagerSubscription`` (``projections/subscription.py``): every committed event once,
without waiting for the readable head.

Notification ids commit out of order (``ledger.store.horizon``): an event with a lower
id can commit after one with a higher id. A :class:`PollingSubscription` waits for the
readable head and so never passes it; an eager one returns the higher id at once,
keeps asking for the lower, and returns it when it commits: late, but never missed,
never twice. Here on a real PostgreSQL server, one open transaction at a time, then
with racing writers, rollbacks and a long transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from ledger.store.recorder import LedgerPostgresApplicationRecorder, LedgerPostgresProcessRecorder
from projections import subscription as subscription_module
from projections.subscription import EagerSubscription, PollingSubscription
from tests.support.servers import POSTGRES_URL
from tests.support.waiting import wait_for
from tests.test_ordering import Probe
from tests.test_recorder import drop_schema, new_datastore, new_schema, require_postgres

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def recorder() -> Iterator[LedgerPostgresApplicationRecorder]:
    require_postgres()
    schema = new_schema()
    datastore = new_datastore(schema, "text", pool_size=4)
    try:
        recorder = LedgerPostgresApplicationRecorder(datastore, events_table_name="events")
        recorder.create_table()
        yield recorder
    finally:
        datastore.close()
        drop_schema(schema)


def _insert(recorder: LedgerPostgresApplicationRecorder, originator: str, n: int = 1) -> list[int]:
    ids = recorder.insert_events([StoredEvent(originator, v, "t", b"s") for v in range(1, n + 1)])
    assert ids is not None
    return list(ids)


def _open_insert(
    conn: psycopg.Connection[Any], recorder: LedgerPostgresApplicationRecorder, originator: str
) -> int:
    """Inserts one event in ``conn``'s transaction, left open."""
    row = conn.execute(
        sql.SQL("SELECT {}.{}(%s, %s, %s, %s, %s)").format(
            sql.Identifier(recorder.datastore.schema),
            sql.Identifier(recorder.insert_one_function_name),
        ),
        ("0s", originator, 1, "t", b"held"),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _ids(subscription: PollingSubscription, timeout: float = 0.05) -> list[int]:
    return [n.id for n in subscription.next_page(timeout)]


def test_a_late_commit_below_returned_ids_comes_once_after_them(
    recorder: LedgerPostgresApplicationRecorder,
) -> None:
    first = _insert(recorder, "aex-1")[0]
    assert recorder.max_notification_id() == first  # Readable before the others begin.
    with (
        psycopg.connect(POSTGRES_URL) as held,
        EagerSubscription(recorder, gt=0, poll_interval=0.05) as eager,
        PollingSubscription(recorder, gt=0, poll_interval=0.05) as ordered,
    ):
        held_id = _open_insert(held, recorder, "aex-held")
        third = _insert(recorder, "aex-3")[0]
        assert first < held_id < third
        # The ordered subscription stops before the open transaction's id; the eager
        # one returns what is committed and keeps asking for the id it passed.
        assert _ids(ordered) == [first]
        assert _ids(eager) == [first, third]
        assert eager.passed == 1 and eager.position == held_id - 1
        assert _ids(eager) == []  # Asked again: still not committed.
        held.commit()
        assert _ids(eager) == [held_id]
        assert eager.passed == 0 and eager.position == third
        assert _ids(eager) == []
        assert _ids(ordered) == [held_id, third]


def test_a_rolled_back_id_is_dropped_once_the_head_passes_it(
    recorder: LedgerPostgresApplicationRecorder,
) -> None:
    with (
        psycopg.connect(POSTGRES_URL) as held,
        EagerSubscription(recorder, gt=0, poll_interval=0.05) as eager,
    ):
        held_id = _open_insert(held, recorder, "aex-held")
        after = _insert(recorder, "aex-after")[0]
        assert _ids(eager) == [after] and eager.passed == 1
        held.rollback()
        seen: list[int] = []

        def dropped() -> bool:
            seen.extend(_ids(eager))
            return eager.passed == 0

        wait_for(dropped, timeout=30, message="the rolled-back id dropped")
        assert seen == [] and eager.position == after
        assert held_id < after


def test_a_transaction_outside_the_log_does_not_hold_an_eager_reader_back(
    recorder: LedgerPostgresApplicationRecorder,
) -> None:
    with (
        psycopg.connect(POSTGRES_URL) as elsewhere,
        EagerSubscription(recorder, gt=0, poll_interval=0.05) as eager,
        PollingSubscription(recorder, gt=0, poll_interval=0.05) as ordered,
    ):
        elsewhere.execute("SELECT pg_current_xact_id()")  # Holds an id, writes nothing here.
        ids = _insert(recorder, "aex-1", 3)
        assert _ids(eager) == ids and eager.passed == 0
        assert _ids(ordered) == []  # The readable head waits for it.
        elsewhere.rollback()
        assert _ids(ordered) == ids


def test_too_many_ids_to_pass_are_read_in_order_as_the_head_allows(
    recorder: LedgerPostgresApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscription_module, "MAX_PASSED", 2)
    monkeypatch.setattr("ledger.store.recorder.READ_WAIT", 0.1)
    first = _insert(recorder, "aex-1")[0]
    with (
        psycopg.connect(POSTGRES_URL) as held,
        EagerSubscription(recorder, gt=0, poll_interval=0.05) as eager,
    ):
        held_ids = [_open_insert(held, recorder, f"aex-held-{n}") for n in range(3)]
        last = _insert(recorder, "aex-last")[0]
        assert _ids(eager) == [first]  # Three to pass: more than 2.
        assert eager.passed == 0 and eager.position == first
        held.commit()
        assert _ids(eager) == [*held_ids, last]


class _EagerProbe(Probe):
    """The ordering probe's writers, followed by an eager subscription."""

    def follow(self, stop: threading.Event) -> None:
        try:
            with EagerSubscription(
                self.recorder, gt=0, poll_interval=0.05, page_size=50
            ) as subscription:
                while not stop.is_set():
                    for notification in subscription.next_page(0.05):
                        self.delivered.append(notification.id)
        except BaseException as e:
            self.errors.append(e)


@pytest.mark.slow
def test_racing_writers_rollbacks_and_a_long_transaction_each_event_once() -> None:
    require_postgres()
    schema = new_schema()
    datastore = new_datastore(schema, "text", pool_size=8)
    try:
        recorder = LedgerPostgresProcessRecorder(
            datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        probe = _EagerProbe(recorder)
        stop = threading.Event()
        deadline = time.monotonic() + 20
        follower = threading.Thread(target=probe.follow, args=(stop,))
        writers = [threading.Thread(target=probe.writer, args=(i, deadline)) for i in range(4)]
        follower.start()
        for writer in writers:
            writer.start()
        time.sleep(5)
        with psycopg.connect(POSTGRES_URL) as held:
            held_id = _open_insert(held, recorder, "aex-held")
            wait_for(
                lambda: bool(probe.delivered) and probe.delivered[-1] > held_id + 50,
                timeout=60,
                message="events above the held one delivered while it is open",
            )
            assert held_id not in probe.delivered
            held.commit()
        probe.commit([held_id])
        for writer in writers:
            writer.join(timeout=120)
        wait_for(
            lambda: set(probe.delivered) >= probe.committed or bool(probe.errors),
            timeout=120,
            message="every committed event delivered",
        )
        time.sleep(0.5)  # Anything delivered twice would come now.
        stop.set()
        follower.join(timeout=30)
        if probe.errors:
            raise probe.errors[0]
        delivered = probe.delivered
        assert len(delivered) == len(set(delivered)), "an event delivered twice"
        assert set(delivered) == probe.committed
        before_held = delivered[: delivered.index(held_id)]
        assert max(before_held) > held_id + 50  # Late, not lost.
        assert probe.rolled_back > 0 and len(delivered) > 500
    finally:
        datastore.close()
        drop_schema(schema)
