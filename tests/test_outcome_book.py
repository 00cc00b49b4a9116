"""The outcome book: the watermark rule and the outcomes it keeps (no store, no Temporal)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from projections.dispatch.delivery import Call, Delivery, Outcome
from projections.dispatch.outcome_book import Batch, OutcomeBook


def attempted(position: int) -> Delivery:
    """A delivery opened and attempted, its events collected (as after its page's record)."""
    delivery = Delivery.open(
        f"aex-{position}",
        kind="AgentExecution",
        phase=3,
        completed_at=datetime.now(UTC),
        has_callback=True,
        ledger_position=position,
    )
    delivery.attempt(Call.COMPLETE)
    delivery.collect_events()
    return delivery


def resolved(position: int, outcome: Outcome = Outcome.DELIVERED) -> Delivery:
    delivery = attempted(position)
    delivery.resolve(outcome, call=Call.COMPLETE.value)
    return delivery


def names(batch: Batch) -> list[tuple[str, str]]:
    return [(str(e.originator_id), type(e).__name__) for e in batch.events]


def test_a_new_book_is_at_its_recorded_position_with_nothing_to_record() -> None:
    book = OutcomeBook(recorded=7)
    assert book.watermark() == book.recorded_position == 7
    assert not book.has_outcomes and not book.has_news and book.outcome_count == 0
    assert book.take() == Batch([], None)


def test_the_watermark_never_passes_an_open_position() -> None:
    book = OutcomeBook(recorded=10)
    for position in (11, 12, 13):
        book.open(position)
    book.settle(13)
    book.resolve(resolved(12), 12)
    assert book.watermark() == 10  # 11 is open (its records not written, or in flight).
    book.settle(11)
    assert book.watermark() == 13


def test_the_watermark_stops_at_a_delivery_in_flight() -> None:
    book = OutcomeBook()
    book.open(1)
    book.open(2)
    book.open(3)
    book.settle(1)
    book.resolve(resolved(3), 3)
    assert book.watermark() == 1  # 2's call is in flight.
    batch = book.take()
    assert batch.position == 1 and names(batch) == [("aex-3", "Delivered")]


def test_the_recorded_position_never_passes_an_unrecorded_outcome() -> None:
    """A taken batch not yet recorded leaves the recorded position where it was,
    and its outcomes in the next batch."""
    book = OutcomeBook()
    book.open(1)
    book.resolve(resolved(1), 1)
    first = book.take()
    assert first.position == 1 and names(first) == [("aex-1", "Delivered")]
    assert book.recorded_position == 0  # Not recorded until it is written.
    assert book.has_outcomes and book.has_news
    again = book.take()
    assert again == first


def test_resolution_order_does_not_change_the_watermark_nor_the_outcomes() -> None:
    positions = [1, 2, 3, 4]
    results = set()
    for order in itertools.permutations(positions):
        book = OutcomeBook()
        deliveries = {p: resolved(p) for p in positions}
        for position in positions:
            book.open(position)
        seen: set[int] = set()
        for position in order:
            book.resolve(deliveries[position], position)
            seen.add(position)
            expected = max([0, *itertools.takewhile(seen.__contains__, positions)])
            assert book.watermark() == expected, (order, seen)
        batch = book.take()
        assert batch.position == 4
        results.add(frozenset(names(batch)))
    assert len(results) == 1


def test_outcomes_are_kept_after_a_failed_record_and_recorded_once() -> None:
    book = OutcomeBook()
    book.open(1)
    book.resolve(resolved(1), 1)
    failed = book.take()  # The write fails: recorded() is not called.
    book.open(2)
    book.resolve(resolved(2, Outcome.PARKED), 2)
    retried = book.take()
    assert names(retried) == [("aex-1", "Delivered"), ("aex-2", "Parked")]
    assert retried.position == 2
    assert list(retried.events[: len(failed.events)]) == list(failed.events)
    book.recorded(retried)
    assert book.recorded_position == book.watermark() == 2
    assert not book.has_outcomes and not book.has_news
    assert book.take() == Batch([], None)


def test_outcomes_resolved_after_a_take_stay_for_the_next_one() -> None:
    book = OutcomeBook()
    book.open(1)
    book.open(2)
    book.resolve(resolved(1), 1)
    batch = book.take()
    book.resolve(resolved(2), 2)  # While the batch is being written.
    book.recorded(batch)
    assert book.recorded_position == 1
    following = book.take()
    assert names(following) == [("aex-2", "Delivered")] and following.position == 2


def test_the_position_is_taken_before_the_outcomes_it_covers() -> None:
    """An outcome resolved while a take computes the watermark is in that batch."""
    book = OutcomeBook()
    book.open(1)
    late = resolved(1)
    watermark = book.watermark

    def resolved_meanwhile() -> int:
        book.watermark = watermark  # type: ignore[method-assign]
        value = watermark()
        book.resolve(late, 1)  # Settles 1 after the watermark was computed.
        return value

    book.watermark = resolved_meanwhile  # type: ignore[method-assign]
    batch = book.take()
    assert batch.position is None and names(batch) == [("aex-1", "Delivered")]
    book.recorded(batch)
    assert book.take().position == 1


def test_after_a_lost_lock_the_kept_outcomes_are_recorded_again_without_old_positions() -> None:
    book = OutcomeBook(recorded=5)
    for position in (6, 7, 8):
        book.open(position)
    book.resolve(resolved(6), 6)
    book.resolve(resolved(8), 8)  # 7 was not called: the lock was lost first.
    book.take()  # The last flush fails: the store is away with the lock.
    book.forget_positions()
    assert book.outcome_count == 2
    # Standing by, then active again: the run restarts at the recorded position.
    book.restart_at(5)
    assert book.watermark() == 5
    again = book.take()
    assert again.position is None
    assert names(again) == [("aex-6", "Delivered"), ("aex-8", "Delivered")]
    book.recorded(again)
    assert not book.has_outcomes


def test_kept_outcomes_are_taken_without_a_position_when_asked() -> None:
    book = OutcomeBook()
    book.open(1)
    book.resolve(resolved(1), 1)
    batch = book.take(with_position=False)
    assert batch.position is None and names(batch) == [("aex-1", "Delivered")]
    book.recorded(batch)
    assert book.recorded_position == 0 and book.watermark() == 1


def test_a_retry_outside_the_follow_settles_no_position() -> None:
    book = OutcomeBook(recorded=3)
    book.resolve(resolved(2), None)
    batch = book.take()
    assert batch.position is None and names(batch) == [("aex-2", "Delivered")]


def test_a_recorded_position_forgets_the_positions_it_covers() -> None:
    book = OutcomeBook()
    for position in (1, 2, 3):
        book.open(position)
    book.settle(1)
    book.settle(2)
    batch = book.take()
    book.recorded(batch)
    assert book.recorded_position == 2
    book.restart_at(0)  # Even from an older start, 1 and 2 are not in the book any more.
    assert book.watermark() == 0
    book.settle(3)
    assert book.watermark() == 3


@pytest.mark.parametrize("outcome", [Outcome.DELIVERED, Outcome.PARKED, Outcome.STALE])
def test_every_outcome_event_is_taken(outcome: Outcome) -> None:
    book = OutcomeBook()
    book.open(1)
    book.resolve(resolved(1, outcome), 1)
    (event,) = book.take().events
    assert type(event) is next(
        t for t in Delivery.Resolved.__subclasses__() if t.outcome is outcome
    )
