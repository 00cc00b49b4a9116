"""Recording outcomes: the outcome book's batches written to the dispatcher's log.

:class:`OutcomeFlusher` writes what the
:class:`~projections.dispatch.outcome_book.OutcomeBook` holds: each batch of
outcome events in one transaction with the new tracking position
(:meth:`~OutcomeFlusher.flush`), every ``flush_interval`` seconds while a run
goes on (:meth:`~OutcomeFlusher.flush_periodically`). When the store refuses,
the outcomes stay in the book and are written by a later flush. When a record
conflicts (another run recorded the position further, or some of these
deliveries), each delivery's outcome is recorded on its own, and those another
dispatcher recorded are left to it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from eventsourcing.persistence import IntegrityError, Tracking

from ledger.contract.names import LEDGER_LOG
from ledger.store.backoff import Backoff
from projections.dispatch.log import DispatcherLog
from projections.dispatch.outage import STORE_BACKOFF, STORE_ERRORS
from projections.dispatch.outcome_book import OutcomeBook, OutcomeEvent

logger = logging.getLogger(__name__)


class OutcomeFlusher:
    """Writes the book's outcomes, with the position, to the dispatcher's log."""

    def __init__(self, log: DispatcherLog, book: OutcomeBook, *, flush_interval: float) -> None:
        self.log = log
        self.book = book
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        """One flush at a time (the periodic one, in a worker thread, and the last one)."""

    def flush(self) -> None:
        """Records the outcomes waiting and the new position, in one transaction
        (blocking; a store error leaves them in the book)."""
        with self._lock:
            batch = self.book.take()
            tracking = Tracking(LEDGER_LOG, batch.position) if batch.position is not None else None
            try:
                self.log.record(batch.events, tracking)
            except IntegrityError:
                # The position was recorded further by another run, or (after a lost
                # lock) another dispatcher recorded some of these deliveries: record
                # each delivery's outcome on its own, leaving those to the other.
                logger.warning(
                    "dispatcher position or deliveries recorded by another run; "
                    "recording outcomes one delivery at a time"
                )
                self._record_each(batch.events)
            self.book.recorded(batch)

    async def flush_periodically(self) -> None:
        """Flushes every ``flush_interval`` seconds when there is something to record;
        while the store refuses, waits longer between tries. Cancel it to stop."""
        backoff = Backoff(initial=max(2 * self.flush_interval, STORE_BACKOFF.initial), maximum=10.0)
        failures = 0
        while True:
            await asyncio.sleep(backoff.delay(failures) if failures else self.flush_interval)
            if not self.book.has_news:
                failures = 0
                continue
            try:
                await asyncio.to_thread(self.flush)
            except STORE_ERRORS as e:  # Kept in the book; tried again after a pause.
                failures += 1
                logger.warning(
                    "cannot record outcomes yet (%s); retrying in %.1fs", e, backoff.delay(failures)
                )
                continue
            failures = 0

    async def flush_or_keep(self) -> None:
        """After losing the lock: records the outcomes it can now; those it cannot
        stay in the book, recorded first when the lock is held again (a delivery
        another dispatcher recorded meanwhile is left to it). The positions not
        recorded are forgotten: the next run starts from the recorded one."""
        try:
            await asyncio.to_thread(self.flush)
        except STORE_ERRORS as e:
            logger.warning(
                "single-active lock lost; %d outcome events kept until it is back (%s)",
                self.book.outcome_count,
                e,
            )
        self.book.forget_positions()

    async def record_kept(self) -> None:
        """Stopped in standby with outcomes kept since a lost lock: records them now,
        each delivery on its own and without a position (a delivery another
        dispatcher recorded meanwhile is left to it). If the store still refuses,
        they are lost as in a crash, and the log says so: their deliveries stay
        attempted, and the next run settles them (``stale_after_attempt``)."""
        with self._lock:
            batch = self.book.take(with_position=False)
        if not batch.events:
            return
        try:
            await asyncio.to_thread(self._record_each, batch.events)
        except STORE_ERRORS as e:
            logger.error(
                "stopping with %d outcome events not recorded, the store is unavailable (%s); "
                "their deliveries stay attempted and the next run settles them",
                len(batch.events),
                e,
            )
            return
        self.book.recorded(batch)

    def _record_each(self, events: Sequence[OutcomeEvent]) -> None:
        """Records each delivery's events on its own; a conflict leaves it to the other."""
        by_delivery: dict[str, list[OutcomeEvent]] = {}
        for event in events:
            by_delivery.setdefault(str(event.originator_id), []).append(event)
        for delivery_id, own in by_delivery.items():
            try:
                self.log.record(own)
            except IntegrityError:
                logger.warning(
                    "delivery %s was recorded by another dispatcher meanwhile; "
                    "its record stands, this run's outcome for it is dropped",
                    delivery_id,
                )
