"""Page preparation: a page of completions turned into jobs, their attempts recorded first.

For each completion of a page, :class:`PagePreparer` loads the execution and its
:class:`~projections.dispatch.delivery.Delivery` (opening it the first time; one
query for the page's deliveries, one for its executions:
:mod:`~projections.dispatch.reading`), and records ``Opened`` and ``Attempted``
for the whole page in one transaction, *before* any call. A delivery whose
outcome is recorded (or that is parked) is skipped; an empty token is resolved
``no_callback`` there and then; an execution that cannot be read is parked as
``poisoned`` there and then (:func:`park_poisoned`). Two dispatchers racing on a
delivery conflict on its version, so only one calls.

Each completion is opened in the :class:`~projections.dispatch.outcome_book.OutcomeBook`
before anything is read, so that no concurrent flush records a position past it
before its records are written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from eventsourcing.persistence import Notification, RecordConflictError

from ledger.application import Ledger
from ledger.contract.errors import InvalidIdError
from ledger.contract.ids import kind_of_id
from ledger.contract.phases import Phase
from projections.dispatch.calls import call_for
from projections.dispatch.delivery import POISONED, Delivery, Outcome
from projections.dispatch.in_flight import DispatchStats, Job
from projections.dispatch.log import DispatcherLog
from projections.dispatch.outcome_book import OutcomeBook
from projections.dispatch.reading import Completion, read_completions

logger = logging.getLogger(__name__)


class PagePreparer:
    """Turns pages of completions into jobs (blocking: run it in a worker thread)."""

    def __init__(
        self, ledger: Ledger, log: DispatcherLog, book: OutcomeBook, stats: DispatchStats
    ) -> None:
        self.ledger = ledger
        self.log = log
        self.book = book
        self.stats = stats

    def prepare(self, page: Sequence[Notification]) -> list[Job]:
        """The jobs of ``page``, their Opened/Attempted events recorded.

        If another dispatcher recorded some of these deliveries meanwhile, each
        completion is claimed on its own, and those the other one claimed are
        left to it.
        """
        try:
            return self._prepare_together(page)
        except RecordConflictError:
            logger.warning("deliveries recorded concurrently by another dispatcher")
        jobs: list[Job] = []
        for notification in page:
            try:
                jobs += self._prepare_together([notification])
            except RecordConflictError:
                self.book.settle(notification.id)
                self.stats.skipped += 1
        return jobs

    def _prepare_together(self, page: Sequence[Notification]) -> list[Job]:
        """Prepares ``page`` with one record (a conflict fails it whole): one query
        for its executions, one for its deliveries, one insert."""
        jobs: list[Job] = []
        touched: list[Delivery] = []
        counts: list[Outcome] = []
        done: list[int] = []
        for notification in page:
            # Open until this page's records are written (a concurrent flush must not
            # record a position past it before then), and, with a call, until its
            # outcome is resolved.
            self.book.open(notification.id)
        ids = [str(n.originator_id) for n in page]
        with self.log.prefetched(ids):  # One query for the page's deliveries.
            deliveries = {i: self.log.delivery(i) for i in ids}
        waiting = []
        for notification in page:
            delivery = deliveries.get(str(notification.originator_id))
            if delivery is not None and (delivery.is_final or delivery.outcome is Outcome.PARKED):
                self.stats.skipped += 1
                done.append(notification.id)
            else:
                waiting.append(notification)
        for completion in read_completions(self.ledger, waiting):
            delivery = deliveries.get(completion.execution_id)
            execution = completion.execution
            if execution is None:
                touched.append(park_poisoned(completion, delivery))
                counts.append(Outcome.PARKED)
                done.append(completion.position)
                continue
            completed = execution.outcome
            assert completed is not None
            token = execution.callback_token
            if delivery is None:
                delivery = Delivery.open(
                    completion.execution_id,
                    kind=execution.kind_name,
                    phase=completed.phase,
                    completed_at=completed.timestamp,
                    has_callback=bool(token),
                    ledger_position=completion.position,
                )
            touched.append(delivery)
            if not token:
                delivery.resolve(Outcome.NO_CALLBACK, detail="spec.callback_token is empty")
                counts.append(Outcome.NO_CALLBACK)
                done.append(completion.position)
                continue
            delivery.attempt(call_for(Phase(completed.phase)))
            jobs.append(Job(completion.position, delivery, execution, token))
        self.log.record(touched)
        for position in done:
            self.book.settle(position)
        for outcome in counts:
            self.stats.count(outcome)
        return jobs


def park_poisoned(completion: Completion, delivery: Delivery | None) -> Delivery:
    """``completion``'s delivery, parked as :data:`POISONED` (opened first when it is
    new, with what can be known without reading the execution)."""
    logger.error(
        "execution %s cannot be read (%s); its delivery is parked as poisoned",
        completion.execution_id,
        completion.unreadable,
    )
    if delivery is None:
        try:
            kind = kind_of_id(completion.execution_id).name
        except InvalidIdError:
            kind = ""
        delivery = Delivery.open(
            completion.execution_id,
            kind=kind,
            phase=Phase.UNSPECIFIED,
            completed_at=datetime.now(UTC),
            has_callback=True,  # Unknown: kept in the operator's list of pending ones.
            ledger_position=completion.position,
        )
    delivery.resolve(Outcome.PARKED, detail=completion.unreadable, reason=POISONED)
    return delivery
