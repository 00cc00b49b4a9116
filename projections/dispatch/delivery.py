"""The delivery aggregate: the dispatcher's record of one execution's callback.

One per completed execution, with the execution's id, in the dispatcher's own
event-sourced log (never in the ledger's). Its events:

- :class:`Delivery.Opened`: the dispatcher saw the execution's ``Completed``
  event (kind, terminal phase, when it completed, whether it has a token).
- :class:`Delivery.Attempted`: a call to Temporal is about to be made (recorded
  *before* the call, so that a crash between the call and its outcome is told
  apart from a stale token).
- an outcome: :class:`Delivery.Delivered` (with the call that was accepted),
  :class:`Delivery.Stale` (Temporal no longer knows the token),
  :class:`Delivery.StaleAfterAttempt` (the same, after an earlier attempt whose
  fate is unknown: cut off by a crash, timed out, or parked; that attempt may be
  the one that got through), :class:`Delivery.Rejected` (malformed token),
  :class:`Delivery.NoCallback` (empty token), or :class:`Delivery.Parked`
  (transient failures exhausted the bounded retries, or the execution cannot be
  read: its ``reason`` says which; a later retry may still deliver).

Every outcome but ``parked`` is final: once one is recorded, the dispatcher never
calls Temporal for this execution again.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar, cast

from eventsourcing.domain import BaseAggregate, CanInitAggregate
from eventsourcing.utils import get_topic

from ledger.contract.names import DELIVERY_TOPIC, LEGACY_DELIVERY_TOPIC
from ledger.domain.events import TextIdEvent, register_topics


class Outcome(enum.StrEnum):
    """What became of a callback."""

    PENDING = "pending"
    DELIVERED = "delivered"
    STALE = "stale"
    STALE_AFTER_ATTEMPT = "stale_after_attempt"
    """Temporal no longer knows the token, and an earlier attempt's fate is unknown
    (cut off by a crash, or timed out): that attempt may be the one that got through."""
    REJECTED = "rejected"
    NO_CALLBACK = "no_callback"
    PARKED = "parked"

    @property
    def is_final(self) -> bool:
        return self not in (Outcome.PENDING, Outcome.PARKED)


RETRIES_EXHAUSTED = "retries_exhausted"
"""A parked delivery's reason: transient failures ran out its bounded retries."""
UNEXPECTED_ERROR = "unexpected_error"
"""A parked delivery's reason: its call failed in a way nobody foresaw (a bug)."""
POISONED = "poisoned"
"""A parked delivery's reason: its execution's events cannot be read (undecryptable,
undecodable, or of a class that is gone). Retried like any parked delivery, it is
called once the execution reads again (the right key back, the class restored)."""


class Call(enum.StrEnum):
    """Which Temporal call a delivery makes."""

    COMPLETE = "complete"
    FAIL = "fail"
    REPORT_CANCELLATION = "report_cancellation"
    FAIL_CANCELLED = "fail_cancelled"
    """The caller had not asked to cancel: the activity fails with ExecutionCancelled."""


class Delivery(BaseAggregate[str]):
    """The callback story of one execution."""

    class Event(TextIdEvent):
        """Base of the delivery's events."""

    class Opened(Event, CanInitAggregate[str]):
        originator_topic: str
        kind: str
        phase: int
        completed_at: datetime
        has_callback: bool
        ledger_position: int

    class Attempted(Event):
        attempt: int
        call: str

        def apply(self, aggregate: Delivery) -> None:
            if (aggregate.in_flight or aggregate.outcome is Outcome.PARKED) and aggregate.attempts:
                # The previous attempt's fate is unknown (a poisoned one had none).
                aggregate.unconfirmed_attempts += 1
            aggregate.attempts = self.attempt
            aggregate.last_call = self.call
            aggregate.in_flight = True

    class Resolved(Event):
        """Base of the outcome events."""

        call: str
        grpc_status: str
        detail: str

        outcome: ClassVar[Outcome] = Outcome.PENDING

        def apply(self, aggregate: Delivery) -> None:
            aggregate.outcome = type(self).outcome
            aggregate.in_flight = False
            aggregate.detail = self.detail
            aggregate.resolved_at = self.timestamp

    class Delivered(Resolved):
        outcome = Outcome.DELIVERED

    class Stale(Resolved):
        outcome = Outcome.STALE

    class StaleAfterAttempt(Resolved):
        outcome = Outcome.STALE_AFTER_ATTEMPT

    class Rejected(Resolved):
        outcome = Outcome.REJECTED

    class NoCallback(Resolved):
        outcome = Outcome.NO_CALLBACK

    class Parked(Resolved):
        outcome = Outcome.PARKED
        reason: str = ""
        """Why: :data:`RETRIES_EXHAUSTED` (also read for ``""``, as every Parked
        recorded before the field existed), :data:`UNEXPECTED_ERROR`, or
        :data:`POISONED` (the execution's events cannot be read: undecryptable,
        undecodable, or a class that is gone)."""

        def apply(self, aggregate: Delivery) -> None:
            super().apply(aggregate)
            aggregate.parked_reason = self.reason or RETRIES_EXHAUSTED

    def __init__(
        self,
        kind: str,
        phase: int,
        completed_at: datetime,
        has_callback: bool,
        ledger_position: int,
    ) -> None:
        self.kind = kind
        self.phase = phase
        self.completed_at = completed_at
        self.has_callback = has_callback
        self.ledger_position = ledger_position
        self.attempts = 0
        self.unconfirmed_attempts = 0
        self.last_call = ""
        self.in_flight = False
        self.outcome = Outcome.PENDING
        self.detail = ""
        self.resolved_at: datetime | None = None
        self.parked_reason = ""
        """Why it was last parked (see :class:`Parked`); empty when never parked."""

    @classmethod
    def open(
        cls,
        execution_id: str,
        *,
        kind: str,
        phase: int,
        completed_at: datetime,
        has_callback: bool,
        ledger_position: int,
    ) -> Delivery:
        # What the library's ``_create`` does for a given text id, without its checks of
        # what is fixed here (about a third of the cost): the event, then the aggregate.
        opened: Delivery.Opened = cast(Any, cls.Opened)(  # A dataclass (the library's metaclass).
            originator_topic=_DELIVERY_CLASS_TOPIC,
            originator_id=execution_id,
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Opened.create_timestamp(),
            kind=kind,
            phase=phase,
            completed_at=completed_at,
            has_callback=has_callback,
            ledger_position=ledger_position,
        )
        delivery = cast(Delivery, opened.mutate(None))
        delivery.pending_events.append(opened)
        return delivery

    @property
    def is_final(self) -> bool:
        return self.outcome.is_final

    def attempt(self, call: Call) -> None:
        """Records that a call is about to be made (before making it)."""
        if self.is_final:
            msg = f"delivery {self.id!r} is final ({self.outcome}); it is never attempted again"
            raise RuntimeError(msg)
        self._trigger(self.Attempted, attempt=self.attempts + 1, call=str(call))

    def resolve(
        self,
        outcome: Outcome,
        *,
        call: str = "",
        grpc_status: str = "",
        detail: str = "",
        reason: str = "",
    ) -> None:
        """Records the outcome of the last attempt (or of no attempt, for no_callback);
        ``reason`` only for ``parked`` (see :class:`Parked`)."""
        if self.is_final:
            msg = f"delivery {self.id!r} is final ({self.outcome}) already"
            raise RuntimeError(msg)
        extra = {"reason": reason} if outcome is Outcome.PARKED else {}
        self._trigger(
            OUTCOME_EVENTS[outcome], call=call, grpc_status=grpc_status, detail=detail, **extra
        )

    def _trigger(self, event_class: type[Delivery.Event], **fields: Any) -> None:
        """The library's ``trigger_event`` without its per-call check of a class topic
        (a delivery has none) and copy of the arguments: the next event (this id, the
        next version, now), applied, then pending."""
        event: Delivery.Event = cast(Any, event_class)(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=event_class.create_timestamp(),
            **fields,
        )
        event.mutate(self)
        self.pending_events.append(event)


register_topics(Delivery, DELIVERY_TOPIC, LEGACY_DELIVERY_TOPIC)
_DELIVERY_CLASS_TOPIC = get_topic(Delivery)
"""The ``originator_topic`` of an ``Opened`` event (the library's ``_create`` puts it)."""

OUTCOME_EVENTS: dict[Outcome, type[Delivery.Resolved]] = {
    # The event that records each outcome.
    Outcome.DELIVERED: Delivery.Delivered,
    Outcome.STALE: Delivery.Stale,
    Outcome.STALE_AFTER_ATTEMPT: Delivery.StaleAfterAttempt,
    Outcome.REJECTED: Delivery.Rejected,
    Outcome.NO_CALLBACK: Delivery.NoCallback,
    Outcome.PARKED: Delivery.Parked,
}
