"""The calls in flight: the dispatcher's concurrent Temporal calls, at most so many at once.

A :class:`Job` is one delivery, attempted (its ``Attempted`` event recorded) and
ready to call. :class:`InFlightCalls` makes each job's call in a task of its own
(:meth:`InFlightCalls.start`), resolves the delivery with what came of it, and
enters the outcome in the :class:`~projections.dispatch.outcome_book.OutcomeBook`,
where it waits to be recorded. A call that fails unexpectedly parks its
delivery: nothing stalls the book.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.domain.execution import Execution
from ledger.domain.redaction import redact_token
from projections.dispatch.calls import CallbackResult, CallbackSender, call_for, completed_phase
from projections.dispatch.delivery import RETRIES_EXHAUSTED, UNEXPECTED_ERROR, Delivery, Outcome
from projections.dispatch.outcome_book import OutcomeBook
from projections.dispatch.telemetry import delivery_resolved, observed_delivery

logger = logging.getLogger(__name__)


@dataclass
class DispatchStats:
    """Counts of one dispatcher run, by outcome."""

    outcomes: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Completions whose delivery was already recorded (no call made)."""

    def count(self, outcome: Outcome) -> None:
        """Counts one delivery resolved with ``outcome``."""
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        delivery_resolved(outcome)  # ledger_deliveries_total


@dataclass
class Job:
    """One attempted delivery, ready to call."""

    position: int
    """Its completion's ledger position (0 for a retry of a parked delivery)."""
    delivery: Delivery
    execution: Execution
    token: bytes


class InFlightCalls:
    """At most ``max_in_flight`` calls at once, each resolved into ``book``."""

    def __init__(
        self,
        sender: CallbackSender,
        book: OutcomeBook,
        stats: DispatchStats,
        *,
        max_in_flight: int = 64,
    ) -> None:
        self.sender = sender
        self.book = book
        self.stats = stats
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, job: Job, *, refused: Callable[[], bool]) -> bool:
        """Waits for a free slot, then starts ``job``'s call, unless ``refused()``
        is true by then (stopping, or the lock lost): then no call is made, and the
        job's delivery stays attempted, to be attempted again later. Returns whether
        the call started."""
        await self._slots.acquire()
        if refused():
            self._slots.release()
            return False
        task = asyncio.create_task(self._deliver_in_slot(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait(self) -> None:
        """Waits until every call started has ended and been resolved."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _deliver_in_slot(self, job: Job) -> None:
        try:
            await observed_delivery(job.execution, job.delivery, self.deliver(job))
        finally:
            self._slots.release()

    async def deliver(self, job: Job) -> None:
        """Makes ``job``'s call now (no slot), resolves its delivery, and enters the
        outcome in the book."""
        try:
            result: CallbackResult = await self.sender.send(
                job.execution,
                job.token,
                earlier_attempt_unconfirmed=job.delivery.unconfirmed_attempts > 0,
            )
        except Exception as e:  # A bug or an unforeseen error: park, never stall.
            logger.exception("callback for %s failed unexpectedly; parking it", job.execution.id)
            result = CallbackResult(
                Outcome.PARKED, call_for(completed_phase(job.execution)), type(e).__name__, str(e)
            )
            reason = UNEXPECTED_ERROR
        else:
            reason = RETRIES_EXHAUSTED
        job.delivery.resolve(
            result.outcome,
            call=result.call.value,
            grpc_status=result.grpc_status,
            detail=result.detail[:1000],
            reason=reason,
        )
        self.stats.count(result.outcome)
        level = logging.WARNING if result.outcome is Outcome.PARKED else logging.DEBUG
        if logger.isEnabledFor(level):  # The token redacted only for a line written.
            logger.log(
                level,
                "callback %s for %s (token %s) after %d tries",
                result.outcome.value,
                job.execution.id,
                redact_token(job.token),
                result.tries,
            )
        self.book.resolve(job.delivery, job.position or None)
