"""Stores written by round 1 stay readable after the tree got its layers.

``tests/data/round1/`` holds a SQLite ledger and dispatcher log written by the
code of round 1 (before its classes moved to ``ledger.domain`` and
``projections.dispatch``): their topics are ``ledger.execution:Execution.*`` and
``projections.delivery:Delivery.*``. Nothing stored is ever rewritten, so the
current code must read them as they are: the ledger, the views (rebuilt from
zero) and the dispatcher (carrying on from its recorded position).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger import AgentExecution, AgentExecutionStatus, Phase, open_ledger
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.contract.names import (
    COMPLETED_TOPICS,
    DELIVERY_TOPIC,
    EXECUTION_TOPIC,
    LEGACY_DELIVERY_TOPIC,
    LEGACY_EXECUTION_TOPIC,
)
from ledger.domain.execution import Execution
from ledger.store.url import parse_url
from projections.dispatch.delivery import Call, Delivery, Outcome
from projections.dispatch.log import DispatcherLog
from projections.views import Views

ROUND1 = Path(__file__).parent / "data" / "round1"


@pytest.fixture
def round1_url(tmp_path: Path) -> str:
    for name in ("ledger.db", "ledger.dispatcher.db"):
        shutil.copy(ROUND1 / name, tmp_path / name)
    return "sqlite:///" + str(tmp_path / "ledger.db")


def test_the_fixture_really_holds_round_1_topics(round1_url: str) -> None:
    ledger = open_ledger(round1_url)
    try:
        topics = {n.topic for n in ledger.recorder.select_notifications(1, 100)}
    finally:
        ledger.close()
    assert topics == {
        f"{LEGACY_EXECUTION_TOPIC}.Created",
        f"{LEGACY_EXECUTION_TOPIC}.StatusChanged",
        f"{LEGACY_EXECUTION_TOPIC}.Completed",
    }


def test_round_1_executions_read_back_whole(round1_url: str) -> None:
    ledger = open_ledger(round1_url)
    try:
        done = ledger.read("aex-legacy-completed")
        assert done.phase is Phase.COMPLETED
        assert done.version == 3
        resource = done.resource
        assert isinstance(resource, AgentExecution)
        assert [t.name for t in resource.status.tool_calls] == ["search"]
        history = ledger.history("aex-legacy-completed")
        assert [h.type for h in history] == ["Created", "StatusChanged", "Completed"]
        completed = history[-1].event
        assert isinstance(completed, Execution.Completed)
        assert completed.output == {"summary": "done in round 1"}
        failed = ledger.read("wex-legacy-failed")
        assert failed.phase is Phase.FAILED
        # A round-1 execution takes new commands, written under the new topics.
        patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
        ledger.update_status("aex-legacy-open", patch)
        ledger.cancel("aex-legacy-open", "closed by round 2")
        assert ledger.read("aex-legacy-open").phase is Phase.CANCELLED
        topics = [n.topic for n in ledger.recorder.select_notifications(1, 100)]
    finally:
        ledger.close()
    assert topics[-1] == f"{EXECUTION_TOPIC}.Completed"
    assert topics[-1] in COMPLETED_TOPICS
    assert f"{LEGACY_EXECUTION_TOPIC}.Completed" in COMPLETED_TOPICS


def test_views_rebuilt_over_a_round_1_log_see_every_execution(round1_url: str) -> None:
    config = parse_url(round1_url)
    ledger = open_ledger(round1_url)
    try:
        ledger.cancel("aex-legacy-open", "closed by round 2")  # One new-topic event.
    finally:
        ledger.close()
    views = Views(config)
    try:
        for name in ("status", "audit"):
            views.rebuild(name)
        phases = {row.id: row.phase for row in views.status.snapshot()}
        assert phases == {
            "aex-legacy-completed": "EXECUTION_COMPLETED",
            "wex-legacy-failed": "EXECUTION_FAILED",
            "aex-legacy-open": "EXECUTION_CANCELLED",
        }
        outcomes = {row.execution_id: row.outcome for row in views.audit.snapshot()}
        # Outcomes recorded by round 1's dispatcher, under its topics.
        assert outcomes["aex-legacy-completed"] == "no_callback"
        assert outcomes["wex-legacy-failed"] == "rejected"
        assert outcomes["aex-legacy-open"] == "pending"
        assert all(lag.lag == 0 for lag in views.lag() if not lag.name.startswith("dispatcher"))
    finally:
        views.close()


def test_the_dispatcher_log_of_round_1_reads_back(round1_url: str) -> None:
    log = DispatcherLog(parse_url(round1_url).component_env("dispatcher"))
    try:
        topics = {n.topic for n in log.recorder.select_notifications(1, 100)}
        assert all(t.startswith(LEGACY_DELIVERY_TOPIC + ".") for t in topics), topics
        delivery = log.delivery("wex-legacy-failed")
        assert delivery is not None
        assert delivery.is_final
        assert isinstance(delivery, Delivery)
        assert log.position() == 5  # Round 1's dispatcher had passed every completion.
    finally:
        log.close()
    assert DELIVERY_TOPIC != LEGACY_DELIVERY_TOPIC


def test_a_delivery_stores_what_the_library_s_own_machinery_would() -> None:
    """``Delivery`` builds its events without the library's ``_create`` and
    ``trigger_event`` (cheaper); what it stores must be what those would store: same
    topics, versions and state fields, and it must read back the same."""
    log = DispatcherLog({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    completed_at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    fields = {
        "kind": "AgentExecution",
        "phase": 4,
        "completed_at": completed_at,
        "has_callback": True,
        "ledger_position": 7,
    }

    def ours() -> Delivery:
        delivery = Delivery.open("aex-ours", **fields)  # type: ignore[arg-type]
        delivery.attempt(Call.COMPLETE)
        delivery.resolve(Outcome.PARKED, call="complete", grpc_status="UNAVAILABLE", reason="x")
        delivery.attempt(Call.COMPLETE)
        delivery.resolve(Outcome.DELIVERED, call="complete", grpc_status="OK")
        return delivery

    theirs = Delivery._create(Delivery.Opened, id="aex-ours", **fields)
    theirs.trigger_event(Delivery.Attempted, attempt=1, call="complete")
    theirs.trigger_event(
        Delivery.Parked, call="complete", grpc_status="UNAVAILABLE", detail="", reason="x"
    )
    theirs.trigger_event(Delivery.Attempted, attempt=2, call="complete")
    theirs.trigger_event(Delivery.Delivered, call="complete", grpc_status="OK", detail="")

    def stored(delivery: Delivery) -> list[tuple[str, int, dict[str, object]]]:
        rows = []
        for event in delivery.collect_events():
            s = log.mapper.to_stored_event(event)
            state = json.loads(s.state)
            state.pop("timestamp")  # When each was made: the one thing that differs.
            rows.append((s.topic, s.originator_version, state))
        return rows

    assert stored(ours()) == stored(theirs)
    log.save(ours())
    again = log.delivery("aex-ours")
    assert again is not None
    assert (again.outcome, again.attempts, again.unconfirmed_attempts, again.version) == (
        Outcome.DELIVERED,
        2,
        1,
        5,
    )
    assert (again.kind, again.completed_at, again.ledger_position) == (
        "AgentExecution",
        completed_at,
        7,
    )
