"""The ordering probe: writers racing a tailing follower never make it pass or repeat an event.

Writers no longer take a table lock (``ledger.store.horizon``), so notification ids
are drawn in one order and committed in another. For 60 s, four writers mix single
inserts, batches, batches that conflict and roll back (their ids become gaps) and
tracked inserts (events with a tracking record, as the dispatcher writes them),
while a follower tails the log through :class:`~projections.subscription.PollingSubscription`
(what the views, the dispatcher and ``ledger serve`` use). Twenty seconds in, a
transaction inserts an event and stays open for 10 s before it commits: every
follower must wait for it, and the horizon report must name it meanwhile.

At the end the follower has delivered every committed event exactly once, in
notification id order: an event it had passed would be missing (its position never
comes back), one delivered twice would break the order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from psycopg import sql

from ledger.application import open_ledger
from ledger.store.horizon import HorizonHolder, horizon_holder
from ledger.store.recorder import LedgerPostgresProcessRecorder
from projections.subscription import PollingSubscription
from tests.support.builders import agent_execution
from tests.support.servers import POSTGRES_URL, fresh_schema
from tests.support.waiting import wait_for
from tests.test_recorder import drop_schema, new_datastore, new_schema, require_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RACE_SECONDS = 60.0
HOLD_AFTER = 20.0
HOLD_SECONDS = 10.0
WRITERS = 4
LEDGER = str(Path(sys.executable).parent / "ledger")


class Probe:
    """The writers' record of what they committed, and the follower's of what it saw."""

    def __init__(self, recorder: LedgerPostgresProcessRecorder) -> None:
        self.recorder = recorder
        self.committed: set[int] = set()
        self.rolled_back = 0
        self.delivered: list[int] = []
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    def commit(self, ids: Any) -> None:
        with self.lock:
            self.committed.update(ids or [])

    def writer(self, index: int, deadline: float) -> None:
        try:
            self._write(index, deadline)
        except BaseException as e:
            self.errors.append(e)

    def _write(self, index: int, deadline: float) -> None:
        recorder = self.recorder
        step = 0
        previous = f"aex-w{index}-start"
        self.commit(recorder.insert_events([StoredEvent(previous, 1, "t", b"start")]))
        while time.monotonic() < deadline:
            step += 1
            originator = f"aex-w{index}-{step}"
            kind = step % 4
            if kind == 0:  # One event.
                self.commit(recorder.insert_events([StoredEvent(originator, 1, "t", b"one")]))
            elif kind == 1:  # A batch of 2 to 5 events.
                events = [
                    StoredEvent(originator, v, "t", b"batch") for v in range(1, 2 + step % 4 + 1)
                ]
                self.commit(recorder.insert_events(events))
            elif kind == 2:  # A batch that conflicts with an event stored: rolled back.
                events = [
                    StoredEvent(originator, 1, "t", b"doomed"),
                    StoredEvent(previous, 1, "t", b"conflict"),
                ]
                try:
                    recorder.insert_events(events)
                except IntegrityError:
                    self.rolled_back += 1
                else:
                    raise AssertionError("a conflicting insert was recorded")
            else:  # Events with a tracking record, as the dispatcher writes them.
                events = [StoredEvent(originator, v, "t", b"tracked") for v in (1, 2)]
                self.commit(
                    recorder.insert_events(events, tracking=Tracking(f"upstream-{index}", step))
                )
            previous = originator if kind != 2 else previous

    def follow(self, stop: threading.Event) -> None:
        try:
            with PollingSubscription(
                self.recorder, gt=0, poll_interval=0.05, page_size=50
            ) as subscription:
                while not stop.is_set():
                    for notification in subscription.next_page(0.05):
                        self.delivered.append(notification.id)
        except BaseException as e:
            self.errors.append(e)


def insert_and_hold(
    recorder: LedgerPostgresProcessRecorder, hold: Callable[[int, int, int], None]
) -> int:
    """Inserts one event in a transaction left open while ``hold(id, pid, xid)`` runs."""
    with psycopg.connect(POSTGRES_URL) as conn:  # Not autocommit: the transaction stays open.
        row = conn.execute(
            sql.SQL("SELECT * FROM {}.{}(%s, %s, %s, %s, %s)").format(
                sql.Identifier(recorder.datastore.schema),
                sql.Identifier(recorder.insert_one_function_name),
            ),
            ("0s", "aex-held", 1, "t", b"held"),
        ).fetchone()
        assert row is not None
        info = conn.execute(
            "SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint"
        ).fetchone()
        assert info is not None
        hold(int(row[0]), int(info[0]), int(info[1]))
        conn.commit()
        return int(row[0])


def test_writers_racing_a_follower_and_a_long_transaction() -> None:
    require_postgres()
    schema = new_schema()
    datastore = new_datastore(schema, "text", pool_size=WRITERS + 4)
    try:
        recorder = LedgerPostgresProcessRecorder(
            datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        probe = Probe(recorder)
        stop = threading.Event()
        deadline = time.monotonic() + RACE_SECONDS
        follower = threading.Thread(target=probe.follow, args=(stop,))
        writers = [
            threading.Thread(target=probe.writer, args=(i, deadline)) for i in range(WRITERS)
        ]
        follower.start()
        for writer in writers:
            writer.start()
        held: dict[str, Any] = {}

        def hold(event_id: int, pid: int, xid: int) -> None:
            held.update(id=event_id, pid=pid, xid=xid)
            # Others commit after it (their ids above it) while it is open.
            wait_for(
                lambda: recorder.committed_head() > event_id + 50,
                timeout=60,
                message="writes committed after the held insert",
            )
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                holder: HorizonHolder | None = horizon_holder(conn)
            held["holder"] = holder
            time.sleep(HOLD_SECONDS)
            held["delivered_before_commit"] = list(probe.delivered)

        time.sleep(HOLD_AFTER)
        held_id = insert_and_hold(recorder, hold)
        probe.commit([held_id])
        for writer in writers:
            writer.join(timeout=RACE_SECONDS + 60)
        final_head = max(probe.committed)
        wait_for(
            lambda: (
                (bool(probe.delivered) and probe.delivered[-1] >= final_head) or bool(probe.errors)
            ),
            timeout=120,
            message=lambda: f"the follower to reach {final_head} (at {probe.delivered[-1:]})",
        )
        stop.set()
        follower.join(timeout=30)
        if probe.errors:
            raise probe.errors[0]

        # While the held transaction was open, nothing at or above it was delivered.
        before = held["delivered_before_commit"]
        assert before and max(before) < held_id, (held_id, before[-5:])
        holder = held["holder"]
        assert holder is not None and holder.transaction_id <= held["xid"] % 2**32, holder
        # Exactly the committed events, each once, in order (an event passed would be
        # missing; one delivered twice would break the order).
        delivered = probe.delivered
        assert delivered == sorted(set(delivered)), "delivered out of order or twice"
        missing = sorted(probe.committed - set(delivered))
        assert missing == [], f"passed {len(missing)} events, e.g. {missing[:10]}"
        assert set(delivered) == probe.committed
        with psycopg.connect(POSTGRES_URL) as conn:
            stored = conn.execute(
                sql.SQL("SELECT notification_id FROM {} ORDER BY 1").format(
                    sql.Identifier(schema, "events")
                )
            ).fetchall()
        assert [r[0] for r in stored] == delivered
        # Every kind of write happened, and wake-ups went out without NOTIFY in inserts.
        assert probe.rolled_back > 0
        assert len(delivered) > 1000, len(delivered)
        assert recorder.wakeups.sent > 0
    finally:
        datastore.close()
        drop_schema(schema)


def status_rows(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEDGER, "projections", "status", *args],
        env={**os.environ, "LEDGER_URL": url, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_projections_status_names_what_holds_followers_back() -> None:
    require_postgres()
    with fresh_schema(POSTGRES_URL) as url:
        ledger = open_ledger(url)
        try:
            ledger.create(agent_execution("aex-before"))
            # A transaction that holds a transaction id and nothing of the ledger's
            # (any long transaction in the cluster holds followers back).
            with psycopg.connect(POSTGRES_URL) as held:  # Not autocommit: stays open.
                held.execute("SELECT pg_current_xact_id()")
                pid = held.info.backend_pid
                ledger.create(agent_execution("aex-after-1"))
                ledger.create(agent_execution("aex-after-2"))
                result = status_rows(url, "--json")
                assert result.returncode == 0, result.stderr
                rows = {row["name"]: row for row in json.loads(result.stdout)}
                row = rows["status<-Ledger"]
                assert row["held_back"] >= 2 and row["lag"] >= row["held_back"], row
                holder = row["held_by"]
                assert holder is not None and holder["since"] is not None, row
                # Ours, unless an older transaction elsewhere in the cluster holds it too.
                if holder["pid"] == pid:
                    assert holder["state"] == "idle in transaction", holder
                text = status_rows(url)
                assert text.returncode == 0, text.stderr
                assert "not readable yet" in text.stdout and "pid " in text.stdout, text.stdout
                held.rollback()

            def settled() -> bool:
                result = status_rows(url, "--json")
                rows = {row["name"]: row for row in json.loads(result.stdout)}
                return bool(rows["status<-Ledger"]["held_back"] == 0)

            wait_for(settled, timeout=60, message="nothing held back once it ended")
        finally:
            ledger.close()
