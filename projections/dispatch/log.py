"""The dispatcher's log: its own event-sourced record of deliveries, with its position.

Every outcome of a delivery is an event of this log, recorded with the ledger
position it was decided at (a ``Tracking`` row), atomically. The audit view follows
this log, so it lives apart from the dispatcher's loop: reading it needs no Temporal
client.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar, cast

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import IntegrityError, JSONTranscoder, ProcessRecorder, Tracking
from eventsourcing.utils import resolve_topic

from ledger.contract.names import DISPATCHER_LOG, LEDGER_LOG
from ledger.store.keys import check_application_keys
from ledger.store.many import select_events_of
from ledger.store.transcodings import register_ledger_transcodings
from projections.dispatch.delivery import OUTCOME_EVENTS, Delivery, Outcome


class DispatcherLog(Application[str]):
    """The dispatcher's own event-sourced log of deliveries, with its tracking position."""

    name = DISPATCHER_LOG
    env: ClassVar[dict[str, str]] = {"ORIGINATOR_ID_TYPE": "text"}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.keys = check_application_keys(self)  # Refuses keys its store does not know.
        self._prefetch = threading.local()

    def construct_recorder(self) -> ProcessRecorder:
        try:
            return self.factory.process_recorder()
        except IntegrityError:
            # Another process created the tables at this very moment (the library's
            # tracking-table migration row is the one it got first): all is in place.
            return self.factory.process_recorder()

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        register_ledger_transcodings(transcoder)

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast(ProcessRecorder, self.recorder)

    def position(self) -> int | None:
        """The recorded ledger position (None before the first record)."""
        return self.process_recorder.max_tracking_id(LEDGER_LOG)

    def delivery(self, execution_id: str) -> Delivery | None:
        """The delivery of ``execution_id`` (None: none yet); from what
        :meth:`prefetched` read, when this thread is inside it and read that id."""
        prefetched: dict[str, Delivery | None] | None = getattr(self._prefetch, "found", None)
        if prefetched is not None and execution_id in prefetched:
            return prefetched[execution_id]
        try:
            return cast(Delivery, self.repository.get(execution_id))
        except AggregateNotFoundError:
            return None

    @contextlib.contextmanager
    def prefetched(self, execution_ids: Iterable[str]) -> Iterator[None]:
        """Reads the deliveries of ``execution_ids`` with one query; inside the block,
        :meth:`delivery` answers for them from that read (in this thread only)."""
        ids = list(execution_ids)
        found = self.deliveries(ids)
        self._prefetch.found = {i: found.get(i) for i in ids}
        try:
            yield
        finally:
            self._prefetch.found = None

    def deliveries(self, execution_ids: Iterable[str]) -> dict[str, Delivery]:
        """The deliveries of ``execution_ids`` that exist, by id: one query for all."""
        to_event = self.mapper.to_domain_event
        found: dict[str, Delivery] = {}
        for delivery_id, stored in select_events_of(self.recorder, list(execution_ids)).items():
            delivery: Delivery | None = None
            for event in stored:
                delivery = cast(Delivery, cast(Delivery.Event, to_event(event)).mutate(delivery))
            if delivery is not None:
                found[delivery_id] = delivery
        return found

    def record(
        self,
        items: Iterable[Delivery | CanMutateAggregate[str]],
        tracking: Tracking | None = None,
    ) -> None:
        """Records deliveries' pending events, or events, and the position, atomically.

        Deliveries and events are told apart by type, not by the library's runtime
        Protocol checks (``ProcessingEvent.collect_events``: two ``isinstance`` a
        delivery, each about 10 µs); everything else is the library's ``_record``."""
        processing = ProcessingEvent[str](tracking=tracking)
        for item in items:
            if isinstance(item, Delivery):
                processing.events.extend(item.collect_events())
                processing.aggregates[item.id] = item
            else:
                processing.events.append(item)
        if processing.events or tracking is not None:
            self._record(processing)

    def deliveries_in(self, outcome: Outcome) -> list[Delivery]:
        """Every delivery whose current outcome is ``outcome`` (a scan of the log)."""
        found = self._last_event_is(OUTCOME_EVENTS[outcome], self._latest_topics())
        return [d for d in found if d.outcome is outcome]

    def deliveries_to_retry(self, position: int) -> list[Delivery]:
        """The parked deliveries, then those whose last event is an attempt and whose
        completion is at or before ``position``: a retry of a parked delivery cut off
        (a crash, a lost lock) between recording its attempt and its outcome. The
        main follow never reads those again (the position is past them), so they
        are retried with the parked ones. One scan of the log."""
        latest = self._latest_topics()
        parked = [
            d for d in self._last_event_is(Delivery.Parked, latest) if d.outcome is Outcome.PARKED
        ]
        cut_off = [
            d
            for d in self._last_event_is(Delivery.Attempted, latest)
            if d.in_flight and not d.is_final and d.ledger_position <= position
        ]
        return parked + cut_off

    def _last_event_is(self, event: type[Delivery.Event], latest: dict[str, str]) -> list[Delivery]:
        """The deliveries whose last event (``latest``: id -> topic) is an ``event``."""
        ids = [i for i, topic in latest.items() if resolve_topic(topic) is event]
        found = self.deliveries(ids)
        return [found[i] for i in ids if i in found]

    def _latest_topics(self) -> dict[str, str]:
        """Each delivery's last event topic (a scan of the log)."""
        latest: dict[str, str] = {}
        start = 1
        while True:
            page = self.recorder.select_notifications(start=start, limit=1000)
            for notification in page:
                latest[str(notification.originator_id)] = notification.topic
            if len(page) < 1000:
                break
            start = page[-1].id + 1
        return latest
