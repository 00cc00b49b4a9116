"""The console's rebuilds (:mod:`ledger.cli.web_console.rebuilds`), on SQLite and PostgreSQL,
without a browser (``tests/test_console.py`` clicks the button in one):

- a rebuild started there runs in a thread, reports its progress up to the heads it
  rebuilds to, and swaps in the same rows; the live view answers meanwhile;
- a second start while one runs is refused in one line (this console's, or another
  process's holding the view's rebuild lock, as ``ledger projections rebuild`` does);
- a rebuild stopped by a poisoned event ("stop on error") fails in one line and
  leaves the old rows; without it the event becomes a dead letter;
- closing the console stops a running rebuild at its next page, the old view intact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.cli.web_console.rebuilds import Rebuilds, RebuildState
from projections.views import RebuildInProgressError, Views
from tests.support.waiting import wait_for
from tests.test_view_rebuilds import next_position, poison
from tests.test_views import drive, snapshots

pytestmark = pytest.mark.usefixtures("small_pools")  # Several applications a test.


@pytest.fixture
def console_views(open_views: Callable[..., Views]) -> Iterator[tuple[Views, Rebuilds]]:
    views = open_views()
    rebuilds = Rebuilds(views.config, views)
    yield views, rebuilds
    rebuilds.close()


def ended(rebuilds: Rebuilds, name: str) -> RebuildState:
    wait_for(lambda: not rebuilds.states()[name].running, message=f"the {name} rebuild to end")
    return rebuilds.states()[name]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Holds every console rebuild before its replay until set (so one is surely
    running while the test acts), then lets the real rebuild go on."""
    opened = threading.Event()
    real = Views.rebuild

    def held(self: Views, name: str, *args: Any, **kwargs: Any) -> int:
        opened.wait(timeout=120)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Views, "rebuild", held)
    yield opened
    opened.set()


def test_a_rebuild_runs_reports_progress_and_swaps_in_the_same_rows(
    ledger: Ledger, console_views: tuple[Views, Rebuilds]
) -> None:
    views, rebuilds = console_views
    drive(ledger, 0, 12)
    views.catch_up()
    before = snapshots(views)
    head = ledger.recorder.max_notification_id() or 0
    assert rebuilds.start("status", "operator") is None
    state = ended(rebuilds, "status")
    assert state.error is None, state.error
    assert (state.done, state.total, state.events) == (head, head, head)
    assert state.requested_by == "operator" and state.finished_at is not None
    assert snapshots(views) == before
    assert views.status.is_current()
    with pytest.raises(ValueError, match="unknown view"):
        rebuilds.start("nope", "operator")


def test_a_second_start_is_refused_while_one_runs(
    ledger: Ledger,
    console_views: tuple[Views, Rebuilds],
    open_views: Callable[..., Views],
    gate: threading.Event,
) -> None:
    views, rebuilds = console_views
    drive(ledger, 0, 6)
    views.catch_up()
    before = snapshots(views)
    changes = rebuilds.changes
    assert rebuilds.start("audit", "operator") is None
    assert rebuilds.changes > changes
    refused = rebuilds.start("audit", "someone")
    assert refused is not None and "already being rebuilt (asked here by operator" in refused
    assert rebuilds.refusal("audit") == refused
    # Another process's rebuild would be refused too: the console holds the lock.
    with (
        pytest.raises(RebuildInProgressError, match="already being rebuilt"),
        open_views().rebuild_lock("audit"),
    ):
        pass
    assert views.audit.snapshot() == before[1]  # The live view answers meanwhile.
    assert rebuilds.states()["audit"].running
    gate.set()
    state = ended(rebuilds, "audit")
    assert state.error is None and state.requested_by == "operator"
    assert snapshots(views) == before
    assert rebuilds.start("audit", "someone") is None  # Ended: it may run again.
    assert ended(rebuilds, "audit").error is None


def test_a_rebuild_held_off_by_another_process_is_refused_in_one_line(
    ledger: Ledger, console_views: tuple[Views, Rebuilds], open_views: Callable[..., Views]
) -> None:
    _, rebuilds = console_views
    drive(ledger, 0, 3)
    with open_views().rebuild_lock("status"):  # As `ledger projections rebuild` holds it.
        refused = rebuilds.start("status", "operator")
    assert refused is not None
    assert "already being rebuilt by another process" in refused and "\n" not in refused
    assert "status" not in rebuilds.states()  # Nothing started.
    assert rebuilds.start("status", "operator") is None  # Let go: it starts.
    assert ended(rebuilds, "status").error is None


def test_a_poisoned_event_fails_a_strict_rebuild_in_one_line(
    ledger: Ledger, console_views: tuple[Views, Rebuilds]
) -> None:
    views, rebuilds = console_views
    drive(ledger, 0, 8)
    views.catch_up()
    before = snapshots(views)
    position = poison(ledger, "aex-poisoned", b"\xff not JSON at all")
    assert rebuilds.start("status", "operator", stop_on_error=True) is None
    state = ended(rebuilds, "status")
    assert state.error is not None and "\n" not in state.error
    assert f"position {position}" in state.error and "stop on error" in state.error
    assert snapshots(views) == before
    assert views.dead_letters() == []
    # Without "stop on error" the event becomes a dead letter and the rebuild ends.
    assert rebuilds.start("status", "operator") is None
    state = ended(rebuilds, "status")
    assert state.error is None
    assert snapshots(views)[0] == before[0]
    assert [letter.position for letter in views.dead_letters(["status"])] == [position]


def test_closing_stops_a_running_rebuild_and_leaves_the_old_view(
    ledger: Ledger, console_views: tuple[Views, Rebuilds], gate: threading.Event
) -> None:
    views, rebuilds = console_views
    drive(ledger, 0, 6)
    views.catch_up()
    before = snapshots(views)
    assert rebuilds.start("status", "operator") is None
    closing = threading.Thread(target=rebuilds.close)
    closing.start()
    wait_for(lambda: (rebuilds.start("status", "x") or "").startswith("the console is stopping"))
    gate.set()
    closing.join(timeout=120)
    assert not closing.is_alive()
    state = rebuilds.states()["status"]
    assert state.error is not None and "console stopped" in state.error
    assert snapshots(views) == before
    with pytest.raises(Exception):  # noqa: B017 - the rebuild's tables were dropped.
        next_position(views)
