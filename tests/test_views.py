"""Read models (the projections.views package) on SQLite and PostgreSQL.

The ledger is driven through its API (and, for large backlogs, through its
aggregates saved in batches with ``Ledger.save``); the dispatcher's log through
``Delivery`` aggregates recorded with ``DispatcherLog``. No Temporal is needed:
views only read the dispatcher's records.

Each view is checked against the ledger itself and against a from-scratch
rebuild: after following live, after a rebuild during appends (and one racing a
live runner), and after a SIGKILL in the middle of a catch-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import get_topic

from ledger.api.commons.v1 import metadata_pb2
from ledger.application import Ledger, open_ledger
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    AgentExecutionStatus,
    WorkflowExecution,
    WorkflowExecutionStatus,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.store.url import parse_url
from projections.dispatch.delivery import Call, Delivery, Outcome
from projections.dispatch.log import DispatcherLog
from projections.views import Follower, Lag, Views, timestamp_and_phase
from projections.views.audit import AuditRow
from projections.views.status import ExecutionRow, _labels_json
from tests.support.builders import (
    agent_execution,
    agent_status,
    status,
    workflow_execution,
    workflow_status,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ORGS = ("org-a", "org-b", "org-c")


pytestmark = pytest.mark.usefixtures("small_pools")  # Several applications a test.


@pytest.fixture
def dispatcher_log(store_url: str) -> Iterator[DispatcherLog]:
    log = DispatcherLog(parse_url(store_url).component_env("dispatcher"))
    yield log
    log.close()


# Driving the ledger and the dispatcher's log.


def resource(i: int, *, callback: bool = True) -> AgentExecution | WorkflowExecution:
    """Execution ``i``: kinds alternate; org, labels and callback vary with ``i``."""
    labels = {"team": f"t{i % 4}"}
    if i % 5 == 0:
        labels["env"] = "prod"
    token = f"token-{i}".encode() if callback else b""
    if i % 2:
        return agent_execution(
            agent_id=f"agt-{i % 3}",
            message="summarize",
            org=ORGS[i % 3],
            labels=labels,
            token=token,
            envelope=True,
        )
    return workflow_execution(
        workflow_id=f"wfl-{i % 3}",
        workflow_instance_id=f"wfi-{i % 3}",
        org=ORGS[i % 3],
        labels=labels,
        token=token,
        envelope=True,
    )


def started(kind_name: str) -> AgentExecutionStatus | WorkflowExecutionStatus:
    return status(kind_name, Phase.IN_PROGRESS)


def progress(kind_name: str, step: int) -> AgentExecutionStatus | WorkflowExecutionStatus:
    if kind_name == "AgentExecution":
        return agent_status(messages=[f"step {step}"], message_type=0)
    return workflow_status(tasks=[(f"task-{step}", "")])


def drive(ledger: Ledger, start: int, count: int) -> list[str]:
    """``count`` executions through the API: created, started, some progress, then
    completed / failed / cancelled, or left running or pending."""
    ids = []
    for i in range(start, start + count):
        record = ledger.create(resource(i, callback=i % 7 != 0))
        kind = record.resource.kind
        ids.append(record.id)
        ending = i % 6
        if ending == 5:
            continue  # Stays PENDING.
        ledger.update_status(record.id, started(kind))
        for step in range(i % 3):
            ledger.update_status(record.id, progress(kind, step))
        if ending in (0, 1):
            ledger.complete(record.id, {"n": i})
        elif ending == 2:
            ledger.fail(record.id, "boom", details={"i": i})
        elif ending == 3:
            ledger.cancel(record.id, "no longer needed")
    return ids


def bulk(ledger: Ledger, count: int, *, start: int = 0, batch: int = 200) -> list[str]:
    """``count`` complete lifecycles saved ``batch`` aggregates at a time (fast)."""
    ids = []
    pending: list[Execution] = []
    for i in range(start, start + count):
        value: Any = resource(i)
        kind = AGENT_EXECUTION if value.kind == "AgentExecution" else WORKFLOW_EXECUTION
        metadata = metadata_pb2.ApiResourceMetadata()
        metadata.CopyFrom(value.metadata)
        execution = Execution.create(kind.new_id(), kind, metadata, value.spec)
        execution.record_status(started(kind.name))
        if i % 4 == 0:
            execution.fail("boom")
        elif i % 4 != 3:
            execution.complete({"i": i})
        pending.append(execution)
        ids.append(execution.id)
        if len(pending) == batch:
            ledger.save(*pending)
            pending = []
    if pending:
        ledger.save(*pending)
    return ids


def deliver(
    ledger: Ledger,
    log: DispatcherLog,
    execution_id: str,
    outcomes: list[Outcome],
    *,
    position: int | None = None,
) -> None:
    """Records, as the dispatcher would, one attempt per outcome in ``outcomes``."""
    history = ledger.history(execution_id)
    completed = history[-1]
    assert completed.type == "Completed"
    record = ledger.read(execution_id)
    delivery = log.delivery(execution_id) or Delivery.open(
        execution_id,
        kind=record.resource.kind,
        phase=int(completed.phase),
        completed_at=completed.recorded_at,
        has_callback=bool(record.resource.spec.callback_token),
        ledger_position=0,
    )
    for outcome in outcomes:
        if outcome is not Outcome.NO_CALLBACK:
            delivery.attempt(Call.COMPLETE)
        delivery.resolve(outcome)
    log.record([delivery], Tracking("Ledger", position) if position else None)


def terminal(ledger: Ledger, ids: list[str]) -> list[str]:
    return [i for i in ids if ledger.read(i).phase.is_terminal]


def caught_up(views: Views) -> bool:
    return all(lag.lag == 0 for lag in views.lag() if not lag.name.startswith("dispatcher"))


def snapshots(views: Views) -> tuple[list[ExecutionRow], list[AuditRow], dict[str, int]]:
    return views.status.snapshot(), views.audit.snapshot(), views.status.counts_by_phase()


def assert_equals_rebuild(views: Views, names: tuple[str, ...] = ("status", "audit")) -> None:
    """The views' rows equal a rebuild from position zero (and the counts agree)."""
    before = snapshots(views)
    assert before[0], "the status view is empty"
    for name in names:
        views.rebuild(name)
    after = snapshots(views)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] == before[2]
    assert before[2] == dict(Counter(row.phase for row in before[0]))


@contextlib.contextmanager
def running(views: Views) -> Iterator[threading.Event]:
    """``views.run`` in a thread until the block ends; its error is raised here."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            views.run(stop)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


# The status view.


def test_status_rows_match_the_ledger(ledger: Ledger, open_views: Callable[..., Views]) -> None:
    ids = drive(ledger, 0, 24)
    views = open_views()
    views.catch_up()
    rows = {row.id: row for row in views.status.snapshot()}
    assert sorted(rows) == sorted(ids)
    for execution_id in ids:
        record = ledger.read(execution_id)
        history = ledger.history(execution_id)
        row = rows[execution_id]
        spec: Any = record.resource.spec
        assert row.kind == record.resource.kind
        assert row.phase == record.phase.proto_name
        assert row.version == record.version
        assert row.org == record.resource.metadata.org
        assert row.labels == dict(record.resource.metadata.labels)
        assert row.has_callback == bool(spec.callback_token)
        assert row.created_at == history[0].recorded_at
        assert row.updated_at == history[-1].recorded_at
        if row.kind == "AgentExecution":
            assert (row.agent_id, row.workflow_id) == (spec.agent_id, None)
        else:
            assert (row.workflow_id, row.workflow_instance_id) == (
                spec.workflow_id,
                spec.workflow_instance_id,
            )
        if record.phase.is_terminal:
            assert row.completed_at == history[-1].recorded_at
        else:
            assert row.completed_at is None
    assert views.status.get(ids[0]) == rows[ids[0]]
    assert views.status.get("aex-unknown") is None
    assert views.status.counts_by_phase() == dict(Counter(r.phase for r in rows.values()))
    assert views.status.counts_by_phase("WorkflowExecution") == dict(
        Counter(r.phase for r in rows.values() if r.kind == "WorkflowExecution")
    )


def test_one_transaction_per_page(
    ledger: Ledger, open_views: Callable[..., Views], monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk(ledger, 40)  # 40 lifecycles, 2 or 3 events each
    head = ledger.recorder.max_notification_id() or 0
    views = open_views(page_size=25)
    recorder = views.status.recorder
    commits: list[int] = []
    original = recorder.write_page

    def counted(name: str, expected: int | None, position: int, body: Any) -> None:
        original(name, expected, position, body)
        commits.append(position)

    monkeypatch.setattr(recorder, "write_page", counted)
    views.catch_up(["status"])
    assert len(commits) == -(-head // 25)  # ceil: one transaction per page
    assert commits == sorted(commits) and commits[-1] == head
    assert sum(views.status.counts_by_phase().values()) == 40


def test_fast_decoding_equals_the_library_mapper(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    ids = drive(ledger, 0, 18)
    for execution_id in terminal(ledger, ids)[:4]:
        deliver(ledger, dispatcher_log, execution_id, [Outcome.DELIVERED])
    views = open_views()
    views.catch_up()
    fast = snapshots(views)
    for log in views.logs.values():
        log.fast = False
    views.rebuild("status")
    views.rebuild("audit")
    assert snapshots(views) == fast


def test_quick_timestamp_and_phase_agrees_with_a_json_parse(ledger: Ledger) -> None:
    """The quick read of StatusChanged/Completed events gives what a JSON parse gives,
    and None (the slow path) for any text of another shape."""
    ids = drive(ledger, 0, 6)
    states = [
        n.state
        for n in ledger.recorder.select_notifications(start=1, limit=1000)
        if n.topic != get_topic(Execution.Created)
    ]
    assert states and all(n for n in states)
    for state in states:
        parsed = json.loads(state)
        expected = (datetime.fromisoformat(parsed["timestamp"]["_data_"]), parsed["phase"])
        assert timestamp_and_phase(state) == expected
    assert ids
    sample = states[0]
    prefix_end = sample.index(b',"phase":')
    others = [
        b"",
        b"{}",
        sample.replace(b'"phase":', b'"phase": '),  # Another spacing.
        sample.replace(b'"phase":', b'"phase":-', 1),  # Not digits.
        sample[: prefix_end + len(b',"phase":')],  # Cut before the digits.
        sample.replace(b'"datetime_iso"', b'"datetime_isoformat"'),
        sample[:-1] + b',"class_version":2}',  # Needs upcasting: never the quick read.
        sample.replace(b"T", b"\xff", 1),  # Not an ISO time.
        sample.replace(b"T", "\u00e9".encode(), 1),  # Not ASCII.
    ]
    for other in others:
        assert timestamp_and_phase(other) is None, other


def test_labels_column_is_sorted_json() -> None:
    assert _labels_json({}) == "{}"
    assert _labels_json({"b": "2", "a": "1"}) == '{"a": "1", "b": "2"}'
    assert _labels_json({"a": "1", "b": "2"}) == '{"a": "1", "b": "2"}'
    assert json.loads(_labels_json({"q": '"\\', "\u00e9": "x"})) == {"q": '"\\', "\u00e9": "x"}


def test_unknown_topics_are_skipped_but_tracked(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 3)
    ledger.recorder.insert_events(
        [StoredEvent("aex-stranger", 1, "ledger.gone:Vanished.Event", b"{}")]
    )
    drive(ledger, 3, 3)
    views = open_views()
    views.catch_up()
    assert len(views.status.snapshot()) == 6
    lags = {lag.name: lag for lag in views.lag()}
    assert lags["status<-Ledger"].lag == 0
    assert lags["status<-Ledger"].head == ledger.recorder.max_notification_id()


def test_list_filters_and_keyset_pagination(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 30)
    views = open_views()
    views.catch_up(["status"])
    everything = views.status.snapshot()
    newest_first = sorted(everything, key=lambda r: (r.created_at, r.id), reverse=True)

    def listed(**filters: Any) -> list[ExecutionRow]:
        """Every page of a listing, three rows at a time."""
        found: list[ExecutionRow] = []
        after = None
        for _ in range(100):
            page, after = views.status.list(limit=3, after=after, **filters)
            assert len(page) <= 3
            found += page
            if after is None:
                return found
        raise AssertionError("pagination does not end")

    assert listed() == newest_first  # every row exactly once, in order
    assert views.status.list(limit=1000) == (newest_first, None)
    assert listed(kind="AgentExecution") == [r for r in newest_first if r.kind == "AgentExecution"]
    for spelling in ("EXECUTION_COMPLETED", "COMPLETED", "completed"):
        assert listed(phase=spelling) == [
            r for r in newest_first if r.phase == "EXECUTION_COMPLETED"
        ]
    assert listed(org="org-b") == [r for r in newest_first if r.org == "org-b"]
    assert listed(label=("team", "t1")) == [r for r in newest_first if r.labels.get("team") == "t1"]
    prod_agents = listed(label=("env", "prod"), kind="AgentExecution", phase="pending")
    assert prod_agents == [
        r
        for r in newest_first
        if r.labels.get("env") == "prod"
        and r.kind == "AgentExecution"
        and r.phase == "EXECUTION_PENDING"
    ]
    middle = newest_first[10].created_at
    assert listed(since=middle) == [r for r in newest_first if r.created_at >= middle]
    assert listed(until=middle) == [r for r in newest_first if r.created_at < middle]
    naive = middle.astimezone(UTC).replace(tzinfo=None)
    assert listed(until=naive, label=("team", "t0")) == [
        r for r in newest_first if r.created_at < middle and r.labels.get("team") == "t0"
    ]
    assert listed(kind="AgentExecution", org="nowhere") == []
    with pytest.raises(ValueError, match="cursor"):
        views.status.list(after="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        views.status.list(limit=0)


def test_injection_attempts_return_nothing_and_harm_nothing(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 6)
    views = open_views()
    views.catch_up()
    before = snapshots(views)
    attacks = [
        "x'; DROP TABLE view_status; --",
        "' OR '1'='1",
        'x"; DELETE FROM view_status_counts; --',
        "%s",
        "EXECUTION_COMPLETED' OR 1=1 --",
    ]
    for attack in attacks:
        assert views.status.list(kind=attack) == ([], None)
        assert views.status.list(phase=attack) == ([], None)
        assert views.status.list(org=attack) == ([], None)
        assert views.status.list(label=(attack, attack)) == ([], None)
        assert views.status.list(label=("team", attack)) == ([], None)
        assert views.status.counts_by_phase(kind=attack) == {}
        assert views.status.get(attack) is None
        assert views.audit.get(attack) is None
    assert snapshots(views) == before
    assert len(before[0]) == 6


# The audit view.


def test_audit_rows_tell_each_completion_story(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    ids = drive(ledger, 0, 18)
    done = terminal(ledger, ids)
    story = {
        done[0]: [Outcome.DELIVERED],
        done[1]: [Outcome.STALE],
        done[2]: [Outcome.PARKED],
        done[3]: [Outcome.PARKED, Outcome.DELIVERED],
        done[4]: [Outcome.REJECTED],
        done[5]: [Outcome.STALE_AFTER_ATTEMPT],
    }
    for execution_id, outcomes in story.items():
        deliver(ledger, dispatcher_log, execution_id, outcomes)
    views = open_views()
    views.catch_up()
    rows = {row.execution_id: row for row in views.audit.snapshot()}
    assert sorted(rows) == sorted(done)  # terminal executions only
    for execution_id, row in rows.items():
        record = ledger.read(execution_id)
        completed = ledger.history(execution_id)[-1]
        assert row.kind == record.resource.kind
        assert row.phase == record.phase.proto_name
        assert row.completed_at == completed.recorded_at
        assert row.has_callback == bool(record.resource.spec.callback_token)
        outcomes = story.get(execution_id, [])
        assert row.outcome == (outcomes[-1].value if outcomes else "pending")
        assert row.attempts == len(outcomes)
        if outcomes:
            delivery = dispatcher_log.delivery(execution_id)
            assert delivery is not None and delivery.resolved_at is not None
            assert row.delivered_at == delivery.resolved_at
            assert row.latency_ms == pytest.approx(
                (delivery.resolved_at - completed.recorded_at).total_seconds() * 1000
            )
        else:
            assert row.delivered_at is None and row.latency_ms is None
    assert views.audit.get(done[3]) == rows[done[3]]
    assert views.audit.get(ids[-1]) is None or ledger.read(ids[-1]).phase.is_terminal
    pending = views.audit.pending()
    expected = sorted(
        (r for r in rows.values() if r.outcome in ("pending", "parked")),
        key=lambda r: (r.completed_at or datetime.min.replace(tzinfo=UTC), r.execution_id),
    )
    assert pending == expected and rows[done[2]] in pending and rows[done[3]] not in pending
    assert views.audit.pending(limit=2) == expected[:2]
    counts = views.audit.outcome_counts()
    assert counts == dict(Counter(r.outcome for r in rows.values()))
    first = min(r.completed_at for r in rows.values() if r.completed_at)
    assert views.audit.outcome_counts(since=first + timedelta(days=1)) == {}
    assert sum(views.audit.outcome_counts(until=first + timedelta(microseconds=1)).values()) == 1


def test_audit_rows_end_the_same_whatever_log_comes_first(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    ids = drive(ledger, 0, 18)
    done = terminal(ledger, ids)
    for n, execution_id in enumerate(done[:6]):
        deliver(
            ledger, dispatcher_log, execution_id, [Outcome.PARKED] * (n % 2) + [Outcome.DELIVERED]
        )
    views = open_views()
    assert views.catch_up_log("audit", "Dispatcher") > 0  # the dispatcher's log first
    early = {row.execution_id: row for row in views.audit.snapshot()}
    assert sorted(early) == sorted(done[:6])
    assert all(row.outcome == "delivered" for row in early.values())
    views.catch_up_log("audit", "Ledger")
    dispatcher_first = views.audit.snapshot()
    views.rebuild("audit")  # the ledger's log first
    assert views.audit.snapshot() == dispatcher_first
    assert len(dispatcher_first) == len(done)


# Live, rebuilt, killed: always equal to a rebuild.


def test_live_following_equals_a_rebuild(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    drive(ledger, 0, 6)
    views = open_views()
    with running(views):
        ids = drive(ledger, 6, 30)
        for execution_id in terminal(ledger, ids)[:8]:
            deliver(ledger, dispatcher_log, execution_id, [Outcome.DELIVERED])
        wait_for(lambda: caught_up(views))
        # Rows written by the live run alone (catch_up was never called).
        assert len(views.status.snapshot()) == 36
        assert sum(row.outcome == "delivered" for row in views.audit.snapshot()) == 8
        more = drive(ledger, 36, 4)
        wait_for(lambda: views.status.get(more[-1]) is not None and caught_up(views))
    assert_equals_rebuild(views)


def test_rebuild_during_appends_equals_a_fresh_rebuild(
    ledger: Ledger, open_views: Callable[..., Views], store_url: str
) -> None:
    bulk(ledger, 1500)
    views = open_views(page_size=50)
    stop = threading.Event()
    appended: list[str] = []

    def append() -> None:
        with contextlib.closing(open_ledger(store_url)) as writer:
            i = 10_000
            while not stop.is_set():
                appended.extend(drive(writer, i, 1))
                i += 1

    appender = threading.Thread(target=append)
    appender.start()
    try:
        wait_for(lambda: len(appended) >= 2)
        during = len(appended)
        events = views.rebuild("status", lambda done, total: None)
        views.rebuild("audit")
        after = len(appended)
    finally:
        stop.set()
        appender.join()
    assert events > 1500 * 2
    assert after > during, "no appends happened while rebuilding"
    views.catch_up()
    assert len(views.status.snapshot()) == 1500 + len(appended)
    assert_equals_rebuild(views)


def test_rebuild_racing_a_live_runner(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    bulk(ledger, 1500)
    ids = drive(ledger, 0, 10)
    deliver(ledger, dispatcher_log, terminal(ledger, ids)[0], [Outcome.STALE])
    runner = open_views(page_size=40)
    rebuilder = open_views(page_size=40)
    head = ledger.recorder.max_notification_id() or 0
    with running(runner):
        # Rebuild while the runner is still working through the backlog: both
        # write the same view, page by page, at once.
        wait_for(lambda: (runner.status.recorder.max_tracking_id("Ledger") or 0) > 0)
        rebuilder.rebuild("status")
        rebuilder.rebuild("audit")
        drive(ledger, 10, 5)
        wait_for(lambda: caught_up(runner))
    assert (runner.status.recorder.max_tracking_id("Ledger") or 0) > head
    assert len(runner.status.snapshot()) == 1515
    assert_equals_rebuild(runner)


def test_a_writer_overtaken_by_a_rebuild_resyncs_instead_of_applying_twice(
    ledger: Ledger, open_views: Callable[..., Views]
) -> None:
    bulk(ledger, 200)
    head = ledger.recorder.max_notification_id() or 0
    runner = open_views(page_size=40)
    follower = Follower(runner.status, runner.logs["Ledger"], page_size=40)
    try:
        for _ in range(3):
            assert follower.step(0) == 40
        assert follower.position == 120
        open_views(page_size=40).rebuild("status")  # Another writer: reset and replay.
        # Its next page (121..160) is already in the rebuilt view: refused, and the
        # follower goes on from the rebuilt position instead.
        assert follower.step(0) == 0
        assert follower.position == head
        drive(ledger, 0, 6)
        follower.catch_up()
    finally:
        follower.close()
    assert sum(runner.status.counts_by_phase().values()) == 206
    assert_equals_rebuild(runner, ("status",))


def test_sigkill_mid_catch_up_then_restart(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views], store_url: str
) -> None:
    ids = bulk(ledger, 4000)
    for execution_id in terminal(ledger, ids[:20])[:10]:
        deliver(ledger, dispatcher_log, execution_id, [Outcome.DELIVERED])
    views = open_views()  # Creates the tables before the child process runs.
    head = ledger.recorder.max_notification_id() or 0
    code = (
        "from ledger.store.url import parse_url\n"
        "from projections.views import Views\n"
        f"Views(parse_url({store_url!r}), page_size=20).catch_up()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ))
    try:
        wait_for(
            lambda: (
                (views.status.recorder.max_tracking_id("Ledger") or 0) > 0
                or child.poll() is not None
            )
        )
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    position = views.status.recorder.max_tracking_id("Ledger") or 0
    assert 0 < position < head, "the catch-up was not cut off half-way"
    views.catch_up()
    rows = views.status.snapshot()
    assert [row.id for row in rows] == sorted(ids)  # every execution exactly once
    assert sum(views.status.counts_by_phase().values()) == len(ids)
    assert all(row.version in (2, 3) for row in rows)
    assert_equals_rebuild(views)


# Lag.


def test_lag_reports_positions_and_heads(
    ledger: Ledger, dispatcher_log: DispatcherLog, open_views: Callable[..., Views]
) -> None:
    ids = drive(ledger, 0, 12)
    done = terminal(ledger, ids)
    last_completed = max(
        n.id
        for n in ledger.recorder.select_notifications(start=1, limit=1000)
        if n.topic.endswith("Execution.Completed")
    )
    drive(ledger, 17, 1)  # Stays PENDING: the ledger's head is past the last completion.
    ledger_head = ledger.recorder.max_notification_id() or 0
    assert ledger_head > last_completed
    deliver(ledger, dispatcher_log, done[0], [Outcome.DELIVERED], position=last_completed - 1)
    deliver(ledger, dispatcher_log, done[1], [Outcome.PARKED])
    dispatcher_head = dispatcher_log.recorder.max_notification_id() or 0
    views = open_views()
    assert views.lag() == [
        Lag("status<-Ledger", 0, ledger_head),
        Lag("audit<-Ledger", 0, ledger_head),
        Lag("audit<-Dispatcher", 0, dispatcher_head),
        Lag("dispatcher<-Ledger", last_completed - 1, last_completed),
    ]
    assert views.lag()[-1].lag == 1
    views.catch_up(["status"])
    lags = {lag.name: lag for lag in views.lag()}
    assert lags["status<-Ledger"] == Lag("status<-Ledger", ledger_head, ledger_head)
    assert lags["audit<-Ledger"].lag == ledger_head
    views.catch_up()
    assert all(lag.lag == 0 for lag in views.lag()[:3])
    with pytest.raises(ValueError, match="unknown view"):
        views.catch_up(["nope"])
    with pytest.raises(ValueError, match="unknown view"):
        views.rebuild("nope")


def test_rebuild_reports_progress(ledger: Ledger, open_views: Callable[..., Views]) -> None:
    bulk(ledger, 100)
    head = ledger.recorder.max_notification_id() or 0
    views = open_views(page_size=60)
    calls: list[tuple[int, int]] = []
    processed = views.rebuild("status", lambda done, total: calls.append((done, total)))
    assert processed == head
    assert len(calls) >= -(-head // 60)
    assert all(total == head for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (head, head)
