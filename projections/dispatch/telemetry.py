"""The dispatcher's metrics and spans, kept out of its loop (one-line hooks there).

- :func:`observed_delivery` wraps one delivery's call: ``ledger_deliveries_in_flight``
  while it runs, then ``ledger_delivery_latency_seconds`` (from the ``Completed``
  event to the call's outcome), and a span ``ledger.deliver`` whose parent is the
  caller's trace context recorded in the execution
  (:mod:`ledger.observability.tracing`), so the delivery sits in the caller's trace.
- :func:`delivery_resolved` counts ``ledger_deliveries_total{outcome}`` (calls and
  ``no_callback`` alike: :class:`~projections.dispatch.in_flight.DispatchStats` counts).
- :func:`heartbeat_batch` is the span of one round of the caller watch's heartbeats;
  :func:`heartbeat_result` counts each heartbeat by result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator

from opentelemetry import trace

from ledger.domain.execution import Execution
from ledger.observability.metrics import (
    DELIVERIES_IN_FLIGHT,
    count_delivery,
    count_heartbeat,
    observe_delivery_latency,
)
from ledger.observability.tracing import context_from, enabled, tracer
from projections.dispatch.delivery import Delivery, Outcome


async def observed_delivery(
    execution: Execution, delivery: Delivery, call: Awaitable[None]
) -> None:
    """Awaits ``call`` (the delivery's call, which resolves ``delivery``) measured and,
    while tracing is on, inside the delivery's span."""
    DELIVERIES_IN_FLIGHT.inc()  # Not ``track_inprogress()``: an object and a lock less.
    try:
        if not enabled():
            await call
        else:
            parent = context_from(execution.resource.metadata.annotations)
            with tracer().start_as_current_span(
                "ledger.deliver", context=parent, end_on_exit=True
            ) as span:
                span.set_attribute("ledger.execution_id", execution.id)
                await call
                span.set_attribute("ledger.outcome", delivery.outcome.value)
                span.set_attribute("ledger.attempts", delivery.attempts)
                if delivery.outcome is Outcome.PARKED:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, "parked"))
    finally:
        DELIVERIES_IN_FLIGHT.dec()
    if delivery.outcome is not Outcome.PENDING:
        observe_delivery_latency(delivery.completed_at)


def delivery_resolved(outcome: Outcome) -> None:
    """Counts one delivery resolved with ``outcome``."""
    count_delivery(outcome.value)


@contextlib.contextmanager
def heartbeat_batch(count: int) -> Iterator[None]:
    """The span of one round of ``count`` heartbeats (none while tracing is off)."""
    if not count or not enabled():
        yield
        return
    with tracer().start_as_current_span("ledger.heartbeats") as span:
        span.set_attribute("ledger.heartbeats", count)
        yield


def heartbeat_result(result: str) -> None:
    """Counts one heartbeat: ``sent``, ``cancel_requested``, ``gone`` or ``failed``."""
    count_heartbeat(result)
