"""The outcome book: which deliveries are in flight, which outcomes wait to be
recorded, and how far the dispatcher's position may go.

The dispatcher records each outcome in its log together with its tracking
position, the *watermark*: the highest ledger position at or below which every
completion seen has its outcome resolved *and* taken for recording. It never
records a position past a delivery whose outcome is not yet recorded, so that a
crash at any moment leaves every completion past the recorded position to be
read again, and none before it without an outcome.

The book holds, in memory only:

- the *positions* seen and not yet covered by the recorded position, each
  *open* (its records not written yet, or its call in flight) or *settled*;
- the *resolved* deliveries: outcome decided, events not yet taken;
- the *unrecorded* outcome events: taken for a record that has not succeeded
  yet. They are kept across a failed record (and a lost lock) until one succeeds.

It does no I/O: the dispatcher takes a :class:`Batch`, writes it, and tells the
book with :meth:`OutcomeBook.recorded`. Every method holds the book's lock: the
dispatcher's steps run in worker threads as well as on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from eventsourcing.domain import CanMutateAggregate

from projections.dispatch.delivery import Delivery

OutcomeEvent = CanMutateAggregate[str]
"""An event of a delivery, as recorded in the dispatcher's log."""


@dataclass(frozen=True)
class Batch:
    """What to record next: outcome events, and the position to record with them
    (``None`` when it would not move the recorded position)."""

    events: Sequence[OutcomeEvent]
    position: int | None = None


class OutcomeBook:
    """In-flight deliveries, their outcomes, and the watermark. Pure (no I/O).

    >>> book = OutcomeBook(recorded=10)
    >>> book.open(11); book.open(12)
    >>> book.settle(12)
    >>> book.watermark()  # 11 is open: 12 may not be recorded yet.
    10
    >>> book.settle(11)
    >>> book.watermark()
    12
    """

    def __init__(self, recorded: int = 0) -> None:
        self._lock = threading.RLock()
        self._recorded = recorded
        self._positions: dict[int, bool] = {}
        """Ledger positions seen past the recorded one: settled (True) or open."""
        self._resolved: list[Delivery] = []
        self._unrecorded: list[OutcomeEvent] = []

    @property
    def recorded_position(self) -> int:
        """The ledger position last recorded (or the one the run started at)."""
        return self._recorded

    def restart_at(self, position: int) -> None:
        """A run starts at ``position``, the one recorded in the log."""
        with self._lock:
            self._recorded = position

    def open(self, position: int) -> None:
        """A completion at ``position`` is being prepared: no position at or past it
        may be recorded until it is settled."""
        with self._lock:
            self._positions[position] = False

    def settle(self, position: int) -> None:
        """The completion at ``position`` needs nothing more from this run (its
        records are written and it has no call to wait for, or another dispatcher
        has it)."""
        with self._lock:
            self._positions[position] = True

    def resolve(self, delivery: Delivery, position: int | None = None) -> None:
        """``delivery`` has its outcome (its events are still to be recorded); the
        completion at ``position`` (``None`` for a retry outside the follow) is
        settled. The delivery joins the resolved ones first, so any watermark that
        covers its position is computed after its events are in the book."""
        with self._lock:
            self._resolved.append(delivery)
            if position is not None:
                self._positions[position] = True

    def watermark(self) -> int:
        """The highest ledger position that may be recorded: the recorded one, moved
        up over the settled positions that follow it, up to the first open one."""
        with self._lock:
            watermark = self._recorded
            for position in sorted(self._positions):
                if not self._positions[position]:
                    break
                watermark = position
            return watermark

    @property
    def has_outcomes(self) -> bool:
        """Whether outcomes wait to be recorded (resolved or kept from a failed record)."""
        with self._lock:
            return bool(self._resolved or self._unrecorded)

    @property
    def outcome_count(self) -> int:
        """Resolved deliveries plus kept outcome events: what waits to be recorded."""
        with self._lock:
            return len(self._resolved) + len(self._unrecorded)

    @property
    def has_news(self) -> bool:
        """Whether a flush would record anything: outcomes, or a position moved up."""
        with self._lock:
            return self.has_outcomes or self.watermark() > self._recorded

    def take(self, *, with_position: bool = True) -> Batch:
        """Every outcome waiting to be recorded (resolved events join the kept ones),
        and, ``with_position``, the watermark if it is past the recorded position.

        The watermark is computed first: a delivery is settled only after it joined
        the resolved ones, so every outcome the position covers is in the batch.
        The events stay in the book until :meth:`recorded` says they are written.
        """
        with self._lock:
            watermark = self.watermark() if with_position else self._recorded
            resolved, self._resolved = self._resolved, []
            self._unrecorded += [e for delivery in resolved for e in delivery.collect_events()]
            position = watermark if watermark > self._recorded else None
            return Batch(list(self._unrecorded), position)

    def recorded(self, batch: Batch) -> None:
        """``batch`` (from :meth:`take`) is written: its events leave the book, and its
        position, if any, becomes the recorded one."""
        with self._lock:
            del self._unrecorded[: len(batch.events)]
            if batch.position is not None:
                self._recorded = batch.position
                for position in [p for p in self._positions if p <= batch.position]:
                    del self._positions[position]

    def forget_positions(self) -> None:
        """The lock was lost: the positions not recorded are forgotten (the next run
        starts from the recorded one and reads them again); outcomes are kept."""
        with self._lock:
            self._positions.clear()
