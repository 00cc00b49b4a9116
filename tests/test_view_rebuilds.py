"""Status view schema 3 (its events per minute), schema versions, blue/green
rebuilds and dead letters, on SQLite and PostgreSQL (``docs/READ_MODELS.md``).

- every event of an execution reaches its row (cancel requests, gone callers, label
  changes, deletions), whether they arrive in one page or one per page;
- a view of another schema version is stale: reading or catching it up says so,
  ``run`` rebuilds it first;
- a rebuild builds beside the live view and swaps in only once caught up: a rebuild
  SIGKILLed midway, or stopped by a poisoned event, leaves the old view answering
  with its old rows; two rebuilds of one view never run at once;
- a poisoned event becomes a dead letter (never with the token in its error) and the
  follower carries on, unless it was told to stop on error;
- the events per minute count each event once, in the minute of its own time, and a
  rebuild counts the same; encrypted events too.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.application import Ledger, open_ledger
from ledger.cli.grpc_server.errors import status_of
from ledger.contract.names import CREATED_TOPICS, STATUS_CHANGED_TOPICS
from ledger.store.url import parse_url
from projections.views import (
    DeadLetter,
    PoisonedEventError,
    RebuildInProgressError,
    StaleViewError,
    Views,
)
from projections.views._rebuild import NEXT_SUFFIX, rebuild_lock
from projections.views.status import StatusView
from tests.support.waiting import wait_for
from tests.test_views import bulk, drive, resource, snapshots

ROOT = Path(__file__).resolve().parent.parent
TOKEN = base64.b64encode(b"\x0a\x24 a distinctive task token for dead letters 0123456789").decode()


pytestmark = pytest.mark.usefixtures("small_pools")  # Several applications a test.


def signals(ledger: Ledger) -> dict[str, str]:
    """Executions that received each later event: cancel request, gone caller, label
    change, deletion (one of each, and one with all but the deletion)."""
    made = [ledger.create(resource(i, callback=True)).id for i in range(1, 11, 2)]
    cancel, gone, relabel, doomed, everything = made
    ledger.record_cancel_request(cancel, by="wf-caller")
    ledger.record_caller_gone(gone, "the caller's workflow ended")
    for execution_id in (relabel, everything):
        changed: Any = ledger.get(execution_id)
        changed.ClearField("status")
        changed.metadata.labels.clear()
        changed.metadata.labels.update({"env": "staging", "owner": "ops"})
        ledger.update(changed)
    ledger.record_cancel_request(everything)
    ledger.record_caller_gone(everything, "timed out")
    ledger.delete(doomed, "no longer wanted")
    return {
        "cancel": cancel,
        "gone": gone,
        "relabel": relabel,
        "doomed": doomed,
        "everything": everything,
    }


def listed(views: Views, **filters: Any) -> set[str]:
    found, cursor = views.status.list(limit=1000, **filters)
    assert cursor is None
    return {row.id for row in found}


def test_every_event_reaches_the_row_in_one_page_or_one_per_page(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 6)
    ids = signals(ledger)
    whole, single = open_views(), open_views(page_size=1)
    whole.catch_up(["status"])
    rows = {row.id: row for row in whole.status.snapshot()}
    for execution_id, row in rows.items():
        assert row.version == len(ledger.history(execution_id)), execution_id
    assert rows[ids["cancel"]].cancel_requested_at is not None
    assert rows[ids["cancel"]].caller_gone_at is None
    assert rows[ids["gone"]].caller_gone_at is not None
    assert rows[ids["relabel"]].labels == {"env": "staging", "owner": "ops"}
    assert rows[ids["doomed"]].deleted and rows[ids["doomed"]].phase == "EXECUTION_CANCELLED"
    every = rows[ids["everything"]]
    assert every.cancel_requested_at and every.caller_gone_at and not every.deleted
    assert every.updated_at >= every.caller_gone_at >= every.cancel_requested_at
    # Listing: deleted left out unless asked; the new filters; the label index follows.
    assert ids["doomed"] not in listed(whole)
    assert ids["doomed"] in listed(whole, include_deleted=True)
    assert listed(whole, cancel_requested=True) == {ids["cancel"], ids["everything"]}
    assert listed(whole, caller_gone=True) == {ids["gone"], ids["everything"]}
    assert listed(whole, label=("owner", "ops")) == {ids["relabel"], ids["everything"]}
    assert not listed(whole, label=("team", "t1")) & {ids["relabel"], ids["everything"]}
    counts = whole.status.counts_by_phase()
    assert sum(counts.values()) == len(rows) - 1  # The deleted one is not counted.
    # One event per page: the same rows, and a rebuild agrees.
    single.catch_up(["status"])
    assert single.status.snapshot() == whole.status.snapshot()
    before = snapshots(whole)
    whole.rebuild("status")
    assert snapshots(whole) == before


def make_stale(views: Views) -> None:
    """Turns the status view's tables into schema 1's: without the three columns it
    gained, and with no ``__schema__`` row (as version 1 wrote them)."""
    recorder = views.status.recorder
    with recorder.write() as tx:
        for column in ("cancel_requested_at", "caller_gone_at", "deleted"):
            tx.execute(recorder.sql(f"ALTER TABLE {{status}} DROP COLUMN {column}"))
        tx.execute(recorder.sql("DELETE FROM {tracking} WHERE application_name = '__schema__'"))


def test_a_stale_view_says_so_and_run_rebuilds_it(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 8)
    make_stale(open_views())
    views = open_views()
    assert views.stale() == ["status"]
    for read in (
        lambda: views.catch_up(["status"]),
        views.status.list,
        views.status.counts_by_phase,
    ):
        with pytest.raises(StaleViewError, match=r"stale .*schema 1.*schema 3.*rebuild status"):
            read()
    views.catch_up(["audit"])  # The other view is current.
    code, message = status_of(StaleViewError("status", 1, 2))
    assert code == grpc.StatusCode.UNAVAILABLE and "ledger projections rebuild status" in message
    stop = threading.Event()
    rebuilt: list[str] = []
    runner = threading.Thread(target=views.run, args=(stop, ["status"], rebuilt.append))
    runner.start()
    try:
        wait_for(views.status.is_current, message="the stale view rebuilt by run")
        more = drive(ledger, 100, 2)
        wait_for(lambda: all(views.status.get(i) is not None for i in more))
    finally:
        stop.set()
        runner.join(timeout=60)
    assert rebuilt == ["status"]
    assert len(views.status.snapshot()) == 10
    assert views.stale() == []


def next_position(views: Views) -> int:
    rebuilt = views.store.recorder(StatusView.schema, suffix=NEXT_SUFFIX, create=False)
    return rebuilt.max_tracking_id("Ledger") or 0


def test_a_rebuild_killed_midway_leaves_the_old_view_answering(
    ledger: Ledger, open_views: Callable[..., Views], store_url: str
) -> None:
    ids = bulk(ledger, 3000)
    views = open_views()
    views.catch_up()
    before = snapshots(views)
    head = ledger.recorder.max_notification_id() or 0
    code = (
        "import sys\n"
        "from ledger.store.url import parse_url\n"
        "from projections.views import Views\n"
        f"views = Views(parse_url({store_url!r}), page_size=20)\n"
        "views.rebuild('status', lambda done, total: print(done, flush=True))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if int(line) >= 200:  # Ten pages into the rebuild.
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert 0 < next_position(views) < head, "the rebuild was not cut off midway"
    # The old view answers, with its old rows, to every reader.
    assert snapshots(views) == before
    assert sum(views.status.counts_by_phase().values()) == len(ids)
    assert len(views.status.list(limit=50)[0]) == 50
    assert open_views().status.snapshot() == before[0]
    # The next rebuild clears what the killed one left and swaps in the same rows.
    views.rebuild("status")
    assert snapshots(views) == before


def poison(ledger: Ledger, execution_id: str, state: bytes, topic: str = CREATED_TOPICS[0]) -> int:
    ledger.recorder.insert_events([StoredEvent(execution_id, 1, topic, state)])
    return ledger.recorder.max_notification_id() or 0


def test_a_rebuild_stopped_by_a_poisoned_event_leaves_the_old_view(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 10)
    views = open_views()
    views.catch_up()
    before = snapshots(views)
    position = poison(ledger, "aex-poisoned", b"\xff not JSON at all")
    strict = open_views(stop_on_error=True)
    with pytest.raises(PoisonedEventError, match=f"position {position} .*aex-poisoned"):
        strict.rebuild("status")
    assert snapshots(views) == before
    assert views.dead_letters() == []
    with pytest.raises(Exception):  # noqa: B017 - the rebuild's tables were dropped.
        next_position(views)
    # By default the event becomes a dead letter and the rebuild goes on.
    views.rebuild("status")
    assert snapshots(views) == before
    [letter] = views.dead_letters()
    assert (
        letter[:5]
        == DeadLetter("status<-Ledger", position, "aex-poisoned", 1, CREATED_TOPICS[0], "")[:5]
    )
    assert letter.error.startswith("UnicodeDecodeError") or "JSON" in letter.error
    assert letter.recorded_at is not None


def test_poisoned_events_become_dead_letters_without_the_token(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 3)
    views = open_views()
    views.catch_up()
    gone = poison(ledger, "aex-stranger", b"{}", "ledger.gone:Vanished.Event")
    bad_time = poison(
        ledger,
        "aex-bad-time",
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"' + TOKEN.encode() + b'"},'
        b'"phase":2,"patch":null,"actor":""}',
        STATUS_CHANGED_TOPICS[0],
    )
    later = drive(ledger, 3, 3)
    views.catch_up()  # Carries on past both.
    assert all(views.status.get(i) is not None for i in later)
    letters = {letter.position: letter for letter in views.dead_letters()}
    assert set(letters) == {gone, bad_time}
    assert "names no class" in letters[gone].error
    assert letters[bad_time].error.startswith("ValueError")
    assert TOKEN not in letters[bad_time].error and TOKEN[:20] not in letters[bad_time].error
    assert {lag.name: lag.lag for lag in views.lag()}["status<-Ledger"] == 0
    # A rebuild records the same dead letters, once each.
    views.rebuild("status")
    assert {letter.position for letter in views.dead_letters()} == {gone, bad_time}
    # Stop on error: a live follower stops there instead.
    poison(ledger, "aex-third", b"[]", CREATED_TOPICS[0])
    with pytest.raises(PoisonedEventError, match="aex-third"):
        open_views(stop_on_error=True).catch_up(["status"])


def test_two_rebuilds_of_one_view_never_run_at_once(
    ledger: Ledger, open_views: Callable[..., Views], store_url: str
) -> None:
    drive(ledger, 0, 4)
    views = open_views()
    views.catch_up()
    before = snapshots(views)
    with rebuild_lock(views.config, views.store, "status"):
        with pytest.raises(RebuildInProgressError, match="already being rebuilt"):
            open_views().rebuild("status")
        open_views().rebuild("audit")  # Another view's rebuild is not held off.
    assert snapshots(views) == before
    views.rebuild("status")  # Released: a rebuild runs again.
    assert snapshots(views) == before


def test_an_undecryptable_event_is_a_dead_letter(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsourcing.cipher import AESCipher

    monkeypatch.setenv("LEDGER_CIPHER_KEY", AESCipher.create_key(32))
    with open_ledger(store_url) as encrypted:
        kept = encrypted.create(resource(1)).id
        # Bytes no key opens (as a process with another key would have left them).
        position = poison(encrypted, "aex-sealed", os.urandom(80))
        after = encrypted.create(resource(3)).id
    views = Views(parse_url(store_url))
    try:
        views.catch_up()
        assert {row.id for row in views.status.snapshot()} == {kept, after}
        [letter] = views.dead_letters(["status"])
        assert (letter.position, letter.event_id) == (position, "aex-sealed")
        assert letter.error
        assert [d.event_id for d in views.dead_letters(["audit"])] == ["aex-sealed"]
    finally:
        views.close()


def at(moment: str, execution_id: str, version: int = 2) -> StoredEvent:
    """A StatusChanged stored as the library writes it, at ``moment`` (of an execution
    the view never saw created: it counts as an event all the same)."""
    state = (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"' + moment.encode() + b'"},'
        b'"phase":2,"patch":null,"actor":""}'
    )
    return StoredEvent(execution_id, version, STATUS_CHANGED_TOPICS[0], state)


def test_events_per_minute_count_each_event_in_its_own_minute(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    ledger.recorder.insert_events(
        [
            at("2026-01-01T10:05:00+00:00", "aex-a", 2),
            at("2026-01-01T10:05:59.999999+00:00", "aex-a", 3),
            at("2026-01-01T11:06:00+01:00", "aex-b", 2),  # 10:06 UTC.
            at("2026-01-01T10:20:00+00:00", "aex-c", 2),
        ]
    )
    poison(ledger, "aex-poisoned", b"\xff not JSON", STATUS_CHANGED_TOPICS[0])
    now = datetime.now(UTC)
    ids = drive(ledger, 0, 5)
    events_now = sum(len(ledger.history(i)) for i in ids)
    views = open_views(page_size=3)  # Events of one minute across pages: added up.
    views.catch_up(["status"])
    per_minute = views.status.events_per_minute
    ten_five = datetime(2026, 1, 1, 10, 5, 30)  # Naive: UTC; its minute is 10:05.
    assert per_minute(ten_five, 3) == [2, 1, 0]
    assert per_minute(ten_five - timedelta(minutes=1), 1) == [0]
    assert per_minute(ten_five + timedelta(minutes=1), 15) == [1] + [0] * 13 + [1]
    # The test's own commands, in the minutes they ran (the dead letter not counted).
    assert sum(per_minute(now - timedelta(minutes=1), 62)) == events_now
    assert [letter.event_id for letter in views.dead_letters(["status"])] == ["aex-poisoned"]
    before = per_minute(ten_five, 16), per_minute(now - timedelta(minutes=1), 62)
    views.rebuild("status")
    assert (per_minute(ten_five, 16), per_minute(now - timedelta(minutes=1), 62)) == before
    with pytest.raises(ValueError, match="minutes must be at least 1"):
        per_minute(now, 0)


def test_events_per_minute_of_an_encrypted_store(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsourcing.cipher import AESCipher

    monkeypatch.setenv("LEDGER_CIPHER_KEY", AESCipher.create_key(32))
    now = datetime.now(UTC)
    with open_ledger(store_url) as encrypted:
        ids = drive(encrypted, 0, 4)
        events = sum(len(encrypted.history(i)) for i in ids)
    views = Views(parse_url(store_url))
    try:
        views.catch_up(["status"])
        assert sum(views.status.events_per_minute(now - timedelta(minutes=1), 62)) == events
        assert views.dead_letters(["status"]) == []
    finally:
        views.close()
