"""The read-model commands of the ``ledger`` CLI through its real entry point.

``list``, ``audit``, ``projections status/run/rebuild``, ``dispatcher
run/retry-parked``, ``setup`` and ``roles``, each run with ``LEDGER_URL`` set, on
SQLite and PostgreSQL where the SQL differs: as a subprocess, except the commands
that only read and print (``list``, ``audit``, ``projections status`` ...), which
call the same entry point in-process (:mod:`tests.support.cli`: what they print is
tested here, not how a process starts). Executions
are written in-process through the Python API (fast); deliveries are recorded
with :class:`~projections.dispatch.dispatcher.DispatcherLog`, as the dispatcher would,
except where the real dispatcher runs against the Temporal dev server.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.api.commons.v1 import metadata_pb2
from ledger.application import Ledger, open_ledger
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    AgentExecution,
    WorkflowExecution,
)
from ledger.contract.names import COMPLETED_TOPICS, CREATED_TOPICS
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.store.url import parse_url
from projections.dispatch.delivery import Call, Delivery, Outcome
from projections.dispatch.log import DispatcherLog
from tests.support import cli
from tests.support.builders import agent_execution, status, workflow_execution
from tests.support.waiting import wait_for

LEDGER = str(Path(sys.executable).parent / "ledger")
_T = TypeVar("_T")

VIEW_LAGS = ["status<-Ledger", "audit<-Ledger", "audit<-Dispatcher", "dispatcher<-Ledger"]


# Running the CLI.


def run(
    url: str, *args: str, env: dict[str, str] | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "LEDGER_URL": url, "COLUMNS": str(columns), **(env or {})}
    return cli.run(args, full_env, timeout=60)


def ok(url: str, *args: str, env: dict[str, str] | None = None, columns: int = 200) -> str:
    result = run(url, *args, env=env, columns=columns)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def ok_json(url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(ok(url, *args, "--json", env=env))


def user_error(url: str, *args: str) -> str:
    """A command that must fail as a user error: exit 1, one ``error:`` line, no traceback."""
    result = run(url, *args)
    assert result.returncode == 1, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def parallel(*calls: Callable[[], _T]) -> list[_T]:
    """Runs independent CLI calls side by side (those in subprocesses; the in-process
    ones one at a time); results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


# Writing executions and deliveries in-process.


def distinctive_token() -> bytes:
    return b"SECRET-callback-token-" + uuid.uuid4().hex.encode() + b"-\x00\xff-end"


def token_forms(token: bytes) -> list[str]:
    """Every printable form of a token that must never appear in output."""
    return [
        token[:30].decode("latin-1"),
        base64.b64encode(token).decode(),
        base64.urlsafe_b64encode(token).decode(),
        token.hex(),
        repr(token)[2:40],
    ]


agent = partial(agent_execution, message="summarize", envelope=True)
workflow = partial(workflow_execution, envelope=True)


def start(ledger: Ledger, execution_id: str) -> None:
    kind_name = "AgentExecution" if execution_id.startswith("aex-") else "WorkflowExecution"
    ledger.update_status(execution_id, status(kind_name, Phase.IN_PROGRESS))


def record_delivery(url: str, ledger: Ledger, execution_id: str, outcomes: list[Outcome]) -> None:
    """Records, as the dispatcher would, one attempt per outcome (no Temporal call)."""
    completed = ledger.history(execution_id)[-1]
    assert completed.type == "Completed"
    record = ledger.read(execution_id)
    log = DispatcherLog(parse_url(url).component_env("dispatcher"))
    try:
        delivery = log.delivery(execution_id) or Delivery.open(
            execution_id,
            kind=record.resource.kind,
            phase=int(completed.phase),
            completed_at=completed.recorded_at,
            has_callback=bool(record.resource.spec.callback_token),
            ledger_position=0,
        )
        for outcome in outcomes:
            delivery.attempt(Call.COMPLETE)
            delivery.resolve(outcome, call=str(Call.COMPLETE))
        log.record([delivery])
    finally:
        log.close()


def count_notifications(url: str, component: str | None, topics: tuple[str, ...] = ()) -> int:
    """Notifications in the ledger's log (``component`` None) or the dispatcher's."""
    app: Any = (
        open_ledger(url)
        if component is None
        else DispatcherLog(parse_url(url).component_env(component))
    )
    try:
        count, start_at = 0, 1
        while True:
            page = app.recorder.select_notifications(start=start_at, limit=1000, topics=topics)
            count += len(page)
            if len(page) < 1000:
                return count
            start_at = page[-1].id + 1
    finally:
        app.close()


@pytest.fixture
def sqlite_ledger(sqlite_url: str) -> Iterator[Ledger]:
    app = open_ledger(sqlite_url)
    yield app
    app.close()


def pause() -> None:
    """Keeps event timestamps strictly apart (the listing orders by them)."""
    time.sleep(0.003)


# ledger list


@dataclass(frozen=True)
class Made:
    id: str
    kind: str
    org: str
    labels: dict[str, str]
    phase: str
    batch: int
    """0, 1 or 2: created before the first time boundary, between, after the second."""


def populate(ledger: Ledger) -> tuple[list[Made], datetime, datetime]:
    """Eight executions varied in kind, org, labels, phase and creation time, oldest
    first; and two times between batches (0-3 | 4-5 | 6-7)."""
    made: list[Made] = []
    bounds: list[datetime] = []
    for i in range(8):
        if i in (4, 6):
            pause()
            bounds.append(datetime.now(UTC))
            pause()
        org = "org-x" if i % 3 == 0 else "org-y"
        labels = {"team": "blue" if i in (1, 2, 5) else "red"}
        if i == 4:
            labels["env"] = "prod"
        resource: AgentExecution | WorkflowExecution = (
            agent(org=org, labels=labels, token=distinctive_token())
            if i % 2 == 0
            else workflow(org=org, labels=labels)
        )
        record = ledger.create(resource)
        execution_id = record.id
        if i in (0, 1, 2):
            ledger.complete(execution_id, {"i": i})
            phase = "EXECUTION_COMPLETED"
        elif i == 3:
            ledger.fail(execution_id, "boom")
            phase = "EXECUTION_FAILED"
        elif i == 4:
            start(ledger, execution_id)
            phase = "EXECUTION_IN_PROGRESS"
        elif i == 5:
            ledger.cancel(execution_id, "not needed")
            phase = "EXECUTION_CANCELLED"
        else:
            phase = "EXECUTION_PENDING"
        batch = 0 if i < 4 else (1 if i < 6 else 2)
        made.append(Made(execution_id, resource.kind, org, labels, phase, batch))
        pause()
    return made, bounds[0], bounds[1]


def newest_first(made: list[Made], keep: Callable[[Made], bool]) -> list[str]:
    return [m.id for m in reversed(made) if keep(m)]


def listed_ids(url: str, *args: str) -> list[str]:
    document = ok_json(url, "list", *args)
    assert document["next"] is None, document
    return [row["id"] for row in document["executions"]]


def all_pages(url: str, limit: int, *args: str) -> list[str]:
    """Follows the cursors from the first page to the last; every page but the last
    is full and has a cursor."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        page_args = [*args, "--limit", str(limit)] + (["--after", cursor] if cursor else [])
        document = ok_json(url, "list", *page_args)
        rows = document["executions"]
        ids += [row["id"] for row in rows]
        cursor = document["next"]
        if cursor is None:
            assert 0 < len(rows) <= limit
            return ids
        assert len(rows) == limit
    raise AssertionError("pagination did not end")


def test_list_filters_and_keyset_pagination(store_url: str, ledger: Ledger) -> None:
    made, t1, t2 = populate(ledger)
    everything = newest_first(made, lambda m: True)

    # The first listing catches the status view up; the others only read it.
    first = ok_json(store_url, "list")
    assert [row["id"] for row in first["executions"]] == everything
    assert first["next"] is None
    row = {r["id"]: r for r in first["executions"]}[made[0].id]
    assert row["kind"] == "AgentExecution" and row["org"] == "org-x"
    assert row["phase"] == "EXECUTION_COMPLETED" and row["completed_at"]
    assert row["labels"] == {"team": "red"} and row["has_callback"] is True
    assert {r["id"]: r for r in first["executions"]}[made[1].id]["has_callback"] is False

    # Times as an operator may type them: another UTC offset, or naive (read as UTC).
    since = t1.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    until = t2.replace(tzinfo=None).isoformat()
    cases: list[tuple[tuple[str, ...], Callable[[Made], bool]]] = [
        (("--since", since), lambda m: m.batch >= 1),
        (("--since", since, "--until", until), lambda m: m.batch == 1),
        (
            ("--label", "team=red", "--since", since),
            lambda m: m.labels["team"] == "red" and m.batch >= 1,
        ),
        # Each of the three filters is needed to narrow this one down to execution 2.
        (
            ("--kind", "AgentExecution", "--phase", "completed", "--org", "org-y"),
            lambda m: (
                m.kind == "AgentExecution" and m.phase == "EXECUTION_COMPLETED" and m.org == "org-y"
            ),
        ),
    ]
    filtered = [lambda args=args: listed_ids(store_url, *args) for args, _ in cases]
    # Keyset pagination covers every row exactly once, newest first (8 rows in pages
    # of 4; 5 labelled rows in pages of 3). With a label the listing is keyed on the
    # label table, so both paths are walked.
    *results, paged, labelled, table, paged_table = parallel(
        *filtered,
        lambda: all_pages(store_url, 4),  # Two full pages: no empty third one.
        lambda: all_pages(store_url, 3, "--label", "team=red"),
        lambda: ok(store_url, "list"),
        lambda: ok(store_url, "list", "--limit", "2"),
    )
    for (args, keep), ids in zip(cases, results, strict=True):
        expected = newest_first(made, keep)
        assert ids == expected, args
        assert 0 < len(expected) < len(made), args  # Each filter keeps some, not all.
    assert results[-1] == [made[2].id]

    assert paged == everything
    assert labelled == newest_first(made, lambda m: m.labels["team"] == "red")
    assert len(set(labelled)) == len(labelled) == 5

    for execution_id in everything:
        assert execution_id in table
    assert "more: --after" not in table
    assert "more: --after " in paged_table
    assert everything[0] in paged_table and everything[2] not in paged_table


def test_in_process_reads_print_what_the_process_prints(
    sqlite_url: str, sqlite_ledger: Ledger
) -> None:
    """The read commands these tests run in-process (:mod:`tests.support.cli`) give
    the exit code, stdout and stderr the real ``ledger`` process gives: results, a
    user error, a usage error, tables at two widths."""
    made, _, _ = populate(sqlite_ledger)
    ok(sqlite_url, "list")  # Catches the status view up, so both sides read the same.
    env = {**os.environ, "LEDGER_URL": sqlite_url}
    calls = [
        (("list",), "80"),
        (("list",), "200"),
        (("list", "--json"), "200"),
        (("list", "--kind", "Banana"), "200"),
        (("list", "--bogus-option"), "80"),
        (("show", made[0].id), "80"),
        (("show", "aex-missing"), "200"),
        (("history", made[3].id), "80"),
        (("audit", made[0].id), "200"),
        (("audit", "--pending", "--json"), "200"),
        (("list", "--help"), "80"),
    ]
    for args, columns in calls:
        assert cli.reads_only(args), args
        both = {**env, "COLUMNS": columns}
        here = cli.run(args, both)
        there = subprocess.run(
            [LEDGER, *args], env=both, capture_output=True, text=True, timeout=60, check=False
        )
        assert (here.returncode, here.stdout, here.stderr) == (
            there.returncode,
            there.stdout,
            there.stderr,
        ), args
    assert not cli.reads_only(("projections", "run"))
    assert not cli.reads_only(("create", "-"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--kind", "Banana"), "unknown kind 'Banana'"),
        (("--label", "team"), "--label must be key=value"),
        (("--label", "=blue"), "--label must be key=value"),
        (("--since", "yesterday"), "--since must be an ISO-8601 time"),
        (("--until", "2026-13-45"), "--until must be an ISO-8601 time"),
        (("--after", "not-a-cursor"), "not a cursor"),
        (("--after", base64.urlsafe_b64encode(b'["x", 1, 2]').decode()), "not a cursor"),
    ],
)
def test_list_bad_input_is_one_clear_line(
    sqlite_url: str, args: tuple[str, ...], expected: str
) -> None:
    ok(sqlite_url, "setup")  # A store that exists: reads never create one.
    assert expected in user_error(sqlite_url, "list", *args)


def test_list_usage_errors_exit_2(sqlite_url: str) -> None:
    results = parallel(
        lambda: run(sqlite_url, "list", "--limit", "0"),
        lambda: run(sqlite_url, "list", "--limit", "1001"),
        lambda: run(sqlite_url, "list", "--phase", "DONE"),
    )
    for result in results:
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert "unknown phase 'DONE'" in results[-1].stderr


def test_table_output_shows_whole_ids_at_80_columns(sqlite_url: str, sqlite_ledger: Ledger) -> None:
    """Output piped to a script (rich's default width, 80) must still show whole ids:
    an operator copies them into ``ledger show`` / ``ledger audit``."""
    first = sqlite_ledger.create(agent(org="acme")).id
    second = sqlite_ledger.create(workflow()).id
    sqlite_ledger.complete(second)
    listing, audit_table = parallel(
        lambda: ok(sqlite_url, "list", columns=80),
        lambda: ok(sqlite_url, "audit", second, columns=80),
    )
    assert first in listing and second in listing, listing
    assert second in audit_table, audit_table


# ledger audit


def test_audit_one_execution_and_the_pending_list(store_url: str, ledger: Ledger) -> None:
    plain = ledger.create(agent()).id  # No callback token.
    ledger.complete(plain, {"ok": True})
    pause()
    delivered = ledger.create(workflow(token=distinctive_token())).id
    start(ledger, delivered)
    ledger.complete(delivered)
    pause()
    parked = ledger.create(agent(token=distinctive_token())).id
    ledger.fail(parked, "boom")
    running = ledger.create(workflow(token=distinctive_token())).id
    start(ledger, running)

    before = ok_json(store_url, "audit", plain)
    assert before["execution_id"] == plain
    assert before["kind"] == "AgentExecution"
    assert before["phase"] == "EXECUTION_COMPLETED"
    # No token: "no callback" at once (issue 13), never pending, no delivery time.
    assert before["outcome"] == "no_callback"
    assert before["attempts"] == 0
    assert before["has_callback"] is False
    assert before["completed_at"] is not None
    assert before["delivered_at"] is None and before["latency_ms"] is None
    page = ok_json(store_url, "audit", "--pending")
    pending = page["pending"]
    assert page["next"] is None
    assert [row["execution_id"] for row in pending] == [delivered, parked]
    assert all(row["outcome"] == "pending" for row in pending)

    record_delivery(store_url, ledger, delivered, [Outcome.DELIVERED])
    record_delivery(store_url, ledger, parked, [Outcome.PARKED, Outcome.PARKED])

    story, pending_after, table, pending_table = parallel(
        lambda: ok_json(store_url, "audit", delivered),
        lambda: ok_json(store_url, "audit", "--pending"),
        lambda: ok(store_url, "audit", delivered),
        lambda: ok(store_url, "audit", "--pending"),
    )
    assert story["outcome"] == "delivered"
    assert story["kind"] == "WorkflowExecution"
    assert story["has_callback"] is True
    assert story["attempts"] == 1
    completed_at = datetime.fromisoformat(story["completed_at"])
    delivered_at = datetime.fromisoformat(story["delivered_at"])
    assert delivered_at > completed_at
    expected_ms = (delivered_at - completed_at).total_seconds() * 1000
    assert story["latency_ms"] == pytest.approx(expected_ms)
    assert 0 < story["latency_ms"] < 60_000

    # Oldest completion first; the delivered one has left, the parked one stays.
    pending_after = pending_after["pending"]
    assert [row["execution_id"] for row in pending_after] == [parked]
    assert [row["outcome"] for row in pending_after] == ["parked"]
    assert pending_after[0]["attempts"] == 2
    assert pending_after[0]["phase"] == "EXECUTION_FAILED"
    # Parked: no delivery, so no delivery time nor latency; when it was parked instead.
    assert pending_after[0]["delivered_at"] is None and pending_after[0]["latency_ms"] is None
    assert pending_after[0]["recorded_at"] is not None

    assert delivered in table and "delivered" in table and "audit of" in table
    assert parked in pending_table and "parked" in pending_table
    assert delivered not in pending_table and plain not in pending_table

    # Not terminal, unknown, malformed.
    not_terminal = user_error(store_url, "audit", running)
    assert "callback story starts when it completes" in not_terminal and running in not_terminal


def test_audit_pending_lists_every_pending_callback(sqlite_url: str, sqlite_ledger: Ledger) -> None:
    """``audit --pending`` is the operator's work list: more than 100 pending
    callbacks must all be listed (or the output must say that more exist)."""
    batch = []
    for i in range(101):
        metadata = metadata_pb2.ApiResourceMetadata(org="bulk")
        spec = agent(token=b"t").spec
        execution = Execution.create(AGENT_EXECUTION.new_id(), AGENT_EXECUTION, metadata, spec)
        execution.complete({"i": i})
        batch.append(execution)
    sqlite_ledger.save(*batch)
    expected = {execution.id for execution in batch}
    # A page at a time (--limit, default 50), each naming the next: all are listed.
    listed: list[dict[str, Any]] = []
    cursor: list[str] = []
    pages = 0
    while True:
        page = ok_json(sqlite_url, "audit", "--pending", "--limit", "40", *cursor)
        listed += page["pending"]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == listed[-1]["execution_id"]
        cursor = ["--after", page["next"]]
    assert pages == 3
    assert len(listed) == len(expected) and {row["execution_id"] for row in listed} == expected
    text = ok(sqlite_url, "audit", "--pending")
    assert "more: --after " in text


def test_audit_user_errors(sqlite_url: str) -> None:
    ok(sqlite_url, "setup")  # A store that exists: reads never create one.
    neither, both = parallel(
        lambda: run(sqlite_url, "audit"),
        lambda: run(sqlite_url, "audit", "aex-01abc", "--pending"),
    )
    for usage in (neither, both):  # Usage errors: exit 2, one line.
        assert usage.returncode == 2, usage.stderr
        assert usage.stderr == "error: give an execution id or --pending (not both)\n"
    unknown, malformed = parallel(
        lambda: user_error(sqlite_url, "audit", "aex-01doesnotexist0000000000"),
        lambda: user_error(sqlite_url, "audit", "nope"),
    )
    assert "does not exist" in unknown and "aex-01doesnotexist0000000000" in unknown
    assert "must start with 'aex-' or 'wex-'" in malformed


# ledger projections status / rebuild


def lags(url: str) -> dict[str, dict[str, int]]:
    rows = ok_json(url, "projections", "status")
    assert [row["name"] for row in rows] == VIEW_LAGS
    for row in rows:
        assert row["lag"] == row["head"] - row["position"], row
    return {row["name"]: row for row in rows}


def test_projections_status_and_rebuild(store_url: str, ledger: Ledger) -> None:
    made, _, _ = populate(ledger)
    completed = [m.id for m in made if m.phase == "EXECUTION_COMPLETED"]
    record_delivery(store_url, ledger, completed[0], [Outcome.DELIVERED])
    record_delivery(store_url, ledger, completed[1], [Outcome.PARKED])
    ledger_events = count_notifications(store_url, None)
    audit_ledger_events = count_notifications(
        store_url,
        None,
        (CREATED_TOPICS[0], COMPLETED_TOPICS[0]),
    )
    dispatcher_events = count_notifications(store_url, "dispatcher")
    assert ledger_events > audit_ledger_events > 0 and dispatcher_events == 6

    fresh = lags(store_url)
    ledger_head = fresh["status<-Ledger"]["head"]
    assert ledger_head >= ledger_events
    assert fresh["status<-Ledger"]["position"] == 0
    assert fresh["status<-Ledger"]["lag"] == ledger_head
    assert fresh["audit<-Ledger"]["head"] == ledger_head
    assert fresh["audit<-Dispatcher"]["head"] >= dispatcher_events
    assert fresh["audit<-Dispatcher"]["lag"] == fresh["audit<-Dispatcher"]["head"]
    last_completed = fresh["dispatcher<-Ledger"]["head"]
    assert 0 < last_completed <= ledger_head
    assert fresh["dispatcher<-Ledger"]["position"] == 0

    listing, pending = parallel(
        lambda: ok_json(store_url, "list"),
        lambda: ok_json(store_url, "audit", "--pending"),
    )
    story, caught_up = parallel(
        lambda: ok_json(store_url, "audit", completed[0]),
        lambda: lags(store_url),
    )
    assert story["outcome"] == "delivered"
    assert pending["pending"][0]["execution_id"] == completed[1]
    # Parked, then the one terminal with a token never delivered; the two terminal
    # ones without a token are "no callback", not pending.
    assert len(pending["pending"]) == 2
    assert caught_up["status<-Ledger"]["position"] == ledger_head
    assert caught_up["audit<-Ledger"]["lag"] == 0
    assert caught_up["audit<-Dispatcher"]["lag"] == 0
    assert caught_up["audit<-Dispatcher"]["position"] == fresh["audit<-Dispatcher"]["head"]
    # The views never move the dispatcher's position. (Its held_back/held_by say
    # which transaction of the cluster holds followers back at that moment: on a
    # server shared with other work they may differ between two reads.)
    moment = ("held_back", "held_by")
    assert {k: v for k, v in caught_up["dispatcher<-Ledger"].items() if k not in moment} == {
        k: v for k, v in fresh["dispatcher<-Ledger"].items() if k not in moment
    }

    # Different views: their rebuilds may run side by side.
    text, summary = parallel(
        lambda: ok(store_url, "projections", "rebuild", "status"),
        lambda: ok_json(store_url, "projections", "rebuild", "audit"),
    )
    assert text.startswith(f"rebuilt status: {ledger_events} events in "), text
    assert summary["view"] == "audit"
    assert summary["events"] == audit_ledger_events + dispatcher_events
    assert isinstance(summary["seconds"], float | int) and summary["seconds"] >= 0

    after, listing_after, pending_after, story_after = parallel(
        lambda: lags(store_url),
        lambda: ok_json(store_url, "list"),
        lambda: ok_json(store_url, "audit", "--pending"),
        lambda: ok_json(store_url, "audit", completed[0]),
    )
    assert after["audit<-Ledger"] == caught_up["audit<-Ledger"]
    assert after["audit<-Dispatcher"] == caught_up["audit<-Dispatcher"]
    assert after["dispatcher<-Ledger"] == fresh["dispatcher<-Ledger"]
    assert listing_after == listing
    assert pending_after == pending
    assert story_after == story


def test_projections_rebuild_or_run_of_an_unknown_view(sqlite_url: str) -> None:
    rebuild, run_ = parallel(
        lambda: run(sqlite_url, "projections", "rebuild", "nope"),
        lambda: run(sqlite_url, "projections", "run", "status", "nope"),
    )
    for usage in (rebuild, run_):  # A usage error: exit 2, one plain line.
        assert usage.returncode == 2, usage.stderr
        assert usage.stderr == "error: unknown view(s) nope: expected status or audit\n"


# ledger projections run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_projections_run_follows_live_and_stops_cleanly(
    store_url: str, ledger: Ledger, signum: signal.Signals
) -> None:
    from projections.views import Views

    before = ledger.create(agent(org="before")).id
    process = subprocess.Popen(
        [LEDGER, "projections", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEDGER_URL": store_url, "COLUMNS": "200"},
    )
    views = Views(parse_url(store_url))
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert banner.startswith("following status, audit"), banner
        # Executions created while it runs: the runner (not a listing's catch-up)
        # puts them into both views; they are read here without catching up.
        created = ledger.create(workflow(org="live", token=distinctive_token())).id
        ledger.complete(created, {"done": 1})

        def projected() -> bool:
            row = views.status.get(created)
            completed = row is not None and row.phase == "EXECUTION_COMPLETED"
            return completed and views.audit.get(created) is not None

        wait_for(projected, timeout=60, message="the runner to project the new execution")
        assert views.status.get(before) is not None
        assert {before, created} <= {r["id"] for r in ok_json(store_url, "list")["executions"]}
        assert process.poll() is None, "the runner stopped by itself"

        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        views.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "stopped", stderr
    assert stdout == ""


# ledger dispatcher run / retry-parked


@pytest.mark.temporal
def test_dispatcher_run_until_caught_up_and_retry_parked(
    sqlite_url: str, sqlite_ledger: Ledger, temporal_address: str
) -> None:
    temporal = {"TEMPORAL_ADDRESS": temporal_address}
    no_callback = sqlite_ledger.create(agent()).id
    sqlite_ledger.complete(no_callback, {"answer": 42})
    token = distinctive_token()  # Not a task token Temporal knows: rejected or stale.
    bogus = sqlite_ledger.create(workflow(token=token)).id
    sqlite_ledger.fail(bogus, "boom")
    assert ok_json(sqlite_url, "audit", no_callback)["outcome"] == "no_callback"

    result = run(sqlite_url, "dispatcher", "run", "--until-caught-up", env=temporal)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "dispatcher stopped: outcomes" in result.stderr
    assert "no_callback 1" in result.stderr
    for form in token_forms(token):
        assert form not in result.stdout + result.stderr

    story, other, lag, table = parallel(
        lambda: ok_json(sqlite_url, "audit", no_callback),
        lambda: ok_json(sqlite_url, "audit", bogus),
        lambda: lags(sqlite_url),
        lambda: ok(sqlite_url, "audit", no_callback),
    )
    assert story["outcome"] == "no_callback"
    assert story["has_callback"] is False and story["attempts"] == 0
    assert story["delivered_at"] is None and story["recorded_at"] is not None
    assert other["outcome"] in ("rejected", "stale"), other
    assert other["has_callback"] is True and other["attempts"] >= 1
    assert "no callback" in table
    assert lag["dispatcher<-Ledger"]["lag"] == 0 and lag["dispatcher<-Ledger"]["position"] > 0
    assert ok_json(sqlite_url, "audit", "--pending") == {"pending": [], "next": None}

    retried = ok_json(sqlite_url, "dispatcher", "retry-parked", env=temporal)
    assert retried == {"retried": 0, "outcomes": {}}
    # Re-running finds nothing to do: no second call for a recorded delivery.
    rerun = run(sqlite_url, "dispatcher", "run", "--until-caught-up", env=temporal)
    assert rerun.returncode == 0, rerun.stderr
    assert "dispatcher stopped: outcomes none" in rerun.stderr


# ledger setup / roles


@pytest.mark.postgres
def test_setup_then_roles_on_postgresql(pg_url: str, postgres_server: str) -> None:
    schema = pg_url.rsplit("schema=", 1)[1]
    # The server trusts local connections, so a password is accepted and ignored:
    # enough to see that setup never prints it.
    with_password = pg_url.replace("postgres@", "postgres:hunter2-pw@", 1)
    assert with_password != pg_url
    printed = ok(with_password, "setup")
    assert printed.strip() == "set up " + pg_url.replace("postgres@", "postgres:***@", 1)
    assert "hunter2" not in printed
    default = ok(pg_url, "roles")
    for role in ("ledger_writer", "ledger_follower", "ledger_reader"):
        assert f"CREATE ROLE {role} NOLOGIN" in default
    assert f"GRANT USAGE ON SCHEMA {schema} TO ledger_writer, ledger_follower, ledger_reader;" in (
        default
    )
    assert f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO" in default

    # The script runs as printed on the set-up schema: every table it names exists.
    # (Role creation is transactional: rolled back, nothing is left behind.)
    prefix = "t" + uuid.uuid4().hex[:8]
    script = ok(pg_url, "roles", "--prefix", prefix)
    assert script.count("GRANT ") >= 5
    with psycopg.connect(postgres_server) as conn:
        try:
            conn.execute(script.encode())

            def can(role: str, table: str, privilege: str) -> bool:
                row = conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)",
                    (f"{prefix}_{role}", f"{schema}.{table}", privilege),
                ).fetchone()
                assert row is not None
                return bool(row[0])

            assert can("reader", "view_status", "SELECT")
            assert not can("reader", "view_status", "INSERT")
            assert can("follower", "view_status", "INSERT")
            assert can("follower", "view_audit", "UPDATE")
            assert not can("follower", "ledger_events", "INSERT")
            assert not can("writer", "ledger_events", "INSERT")
        finally:
            conn.rollback()


def test_roles_on_sqlite_is_a_user_error(sqlite_url: str) -> None:
    assert "roles are for PostgreSQL" in user_error(sqlite_url, "roles")


# Secrets


def test_no_read_model_output_contains_a_token(sqlite_url: str, sqlite_ledger: Ledger) -> None:
    tokens = [distinctive_token() for _ in range(3)]
    ids = []
    for i, token in enumerate(tokens):
        resource: AgentExecution | WorkflowExecution = (
            agent(token=token, labels={"team": "x"}) if i % 2 == 0 else workflow(token=token)
        )
        ids.append(sqlite_ledger.create(resource).id)
    sqlite_ledger.complete(ids[0], {"ok": 1})
    sqlite_ledger.fail(ids[1], "boom")
    record_delivery(sqlite_url, sqlite_ledger, ids[0], [Outcome.DELIVERED])
    # The first two catch the views up (text output); the others only read them.
    commands: list[tuple[str, ...]] = [("list",), ("audit", "--pending")]
    first = [run(sqlite_url, *args) for args in commands]
    others: list[tuple[str, ...]] = [
        ("list", "--json"),
        ("audit", ids[0]),
        ("audit", ids[0], "--json"),
        ("audit", ids[1], "--json"),
        ("audit", "--pending", "--json"),
        ("projections", "status"),
    ]
    # Rebuilds last: a view read while it is rebuilt may be missing rows.
    rebuilds: list[tuple[str, ...]] = [
        ("projections", "rebuild", "status"),
        ("projections", "rebuild", "audit", "--json"),
    ]
    commands += others + rebuilds
    results = first
    for batch in (others, rebuilds):
        results += parallel(*(lambda args=args: run(sqlite_url, *args) for args in batch))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 0, (args, result.stderr)
        printed = result.stdout + result.stderr
        for token in tokens:
            for form in token_forms(token):
                assert form not in printed, (args, form)
    # The outputs did show the executions (so the check above looked at real rows).
    assert all(execution_id in results[0].stdout for execution_id in ids)
    assert ids[1] in results[1].stdout and ids[1] in results[5].stdout
    assert json.loads(results[4].stdout)["has_callback"] is True
    assert all(name in results[7].stdout for name in VIEW_LAGS)
    assert results[8].stdout.startswith("rebuilt status: ")


# Schema versions, dead letters, blue/green rebuilds (docs/READ_MODELS.md).

SCHEMA1 = Path(__file__).parent / "data" / "views_schema1"


def test_a_stale_status_view_is_one_line_until_rebuilt(tmp_path: Path) -> None:
    # Views files written by the previous version (status schema 1) beside its ledger.
    for name in ("ledger.db", "ledger.dispatcher.db", "ledger.views.db"):
        (tmp_path / name).write_bytes((SCHEMA1 / name).read_bytes())
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    line = user_error(url, "list")
    assert line.startswith("error: the status view is stale (its tables have schema 1"), line
    assert "`ledger projections rebuild status`" in line
    # The audit view is current: it is read as it is.
    assert ok_json(url, "audit", "aex-legacy-completed")["outcome"] == "no_callback"
    shown = {row["name"]: row for row in ok_json(url, "projections", "status")}
    assert shown["status<-Ledger"]["stale"] and not shown["audit<-Ledger"]["stale"]
    assert "the status view is stale" in ok(url, "projections", "status")
    assert ok(url, "projections", "rebuild", "status").startswith("rebuilt status: 6 events")
    listed = ok_json(url, "list")["executions"]
    assert sorted(row["id"] for row in listed) == [
        "aex-legacy-completed",
        "aex-legacy-open",
        "wex-legacy-failed",
    ]
    assert all(row["version"] >= 1 and row["deleted"] is False for row in listed)
    assert not any(row["stale"] for row in ok_json(url, "projections", "status"))


def test_dead_letters_are_listed_counted_and_stop_on_error(
    sqlite_url: str, sqlite_ledger: Ledger
) -> None:
    kept = sqlite_ledger.create(agent_execution(agent_id="agent-1", message="hi")).id
    sqlite_ledger.recorder.insert_events(
        [StoredEvent("aex-poisoned", 1, CREATED_TOPICS[0], b"\xff not JSON")]
    )
    position = sqlite_ledger.recorder.max_notification_id()
    after = sqlite_ledger.create(agent_execution(agent_id="agent-2", message="hi")).id
    # The follower carries on past it: both executions are listed.
    assert {row["id"] for row in ok_json(sqlite_url, "list")["executions"]} == {kept, after}
    [letter] = ok_json(sqlite_url, "projections", "dead-letters")
    assert letter["follower"] == "status<-Ledger" and letter["position"] == position
    assert letter["event_id"] == "aex-poisoned" and letter["topic"] == CREATED_TOPICS[0]
    assert letter["error"]
    assert "aex-poisoned" in ok(sqlite_url, "projections", "dead-letters")
    shown = {row["name"]: row for row in ok_json(sqlite_url, "projections", "status")}
    assert shown["status<-Ledger"]["dead_letters"] == 1
    assert shown["audit<-Ledger"]["dead_letters"] == 0
    # --stop-on-error: the rebuild stops there, in one line; the view keeps its rows.
    line = user_error(sqlite_url, "projections", "rebuild", "status", "--stop-on-error")
    assert f"position {position} (aex-poisoned v1" in line and "stop on error" in line
    assert {row["id"] for row in ok_json(sqlite_url, "list")["executions"]} == {kept, after}


def test_list_filters_of_status_schema_2(store_url: str, ledger: Ledger) -> None:
    ids = [ledger.create(agent_execution(agent_id=f"agent-{i}", message="m")).id for i in range(4)]
    ledger.record_cancel_request(ids[0], by="caller")
    ledger.record_caller_gone(ids[1], "timed out")
    ledger.delete(ids[2])

    def listed(*args: str) -> set[str]:
        return {row["id"] for row in ok_json(store_url, "list", *args)["executions"]}

    assert listed() == {ids[0], ids[1], ids[3]}
    assert listed("--cancel-requested") == {ids[0]}
    assert listed("--caller-gone") == {ids[1]}
    assert listed("--include-deleted") == set(ids)
    assert listed("--include-deleted", "--phase", "CANCELLED") == {ids[2]}


def test_a_second_rebuild_of_a_view_is_refused_in_one_line(
    sqlite_url: str, sqlite_ledger: Ledger
) -> None:
    from projections.views import Views
    from projections.views._rebuild import rebuild_lock

    sqlite_ledger.create(agent_execution(agent_id="agent-1", message="hi"))
    views = Views(parse_url(sqlite_url))
    try:
        with rebuild_lock(views.config, views.store, "status"):
            line = user_error(sqlite_url, "projections", "rebuild", "status")
            assert "already being rebuilt" in line
    finally:
        views.close()
    assert ok(sqlite_url, "projections", "rebuild", "status").startswith("rebuilt status")
