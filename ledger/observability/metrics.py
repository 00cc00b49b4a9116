"""Every metric of the ledger's processes, on ``prometheus_client``'s default registry.

Names and units follow Prometheus conventions; labels are low-cardinality (a
command, a result, an outcome, a follower): never an execution id nor a token.
docs/METRICS.md lists each with its meaning and a suggested alert. Metrics read from
the store at scrape time (positions, lag, parked) are collectors of their own
(:mod:`projections.metrics`); those here are counted as things happen.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

COMMANDS = Counter(
    "ledger_commands",
    "Ledger commands run by this process, by command and result (ok, or the error's type).",
    ["command", "result"],
)
COMMAND_DURATION = Histogram(
    "ledger_command_duration_seconds",
    "Time a ledger command took in this process, store round trips included.",
    ["command"],
    buckets=_LATENCY_BUCKETS,
)
EVENTS_APPENDED = Counter(
    "ledger_events_appended",
    "Events this process appended to the ledger, by event type.",
    ["type"],
)
DELIVERIES = Counter(
    "ledger_deliveries",
    "Callback deliveries resolved by this dispatcher, by outcome.",
    ["outcome"],
)
DELIVERY_LATENCY = Histogram(
    "ledger_delivery_latency_seconds",
    "From an execution's Completed event to the outcome of its callback's call "
    "(Temporal's answer, or parked once the retries ran out).",
    buckets=_LATENCY_BUCKETS,
)
DELIVERIES_IN_FLIGHT = Gauge(
    "ledger_deliveries_in_flight",
    "Callback calls to Temporal in flight now.",
)
HEARTBEATS = Counter(
    "ledger_heartbeats",
    "Heartbeats the caller watch sent to waiting callers, by result "
    "(sent, cancel_requested, gone, failed).",
    ["result"],
)
DISPATCHER_ACTIVE = Gauge(
    "ledger_dispatcher_active",
    "1 while this dispatcher holds the store's single-active lock, else 0.",
)


def observe_command(command: str, result: str, seconds: float) -> None:
    """Counts and times one command (``result``: ``ok`` or the error's class name)."""
    COMMANDS.labels(command, result).inc()
    COMMAND_DURATION.labels(command).observe(seconds)


def count_delivery(outcome: str) -> None:
    """Counts one resolved delivery (with a call to Temporal or without: ``no_callback``)."""
    child = _DELIVERY_CHILDREN.get(outcome)
    if child is None:  # ``labels()`` takes a lock and builds a key each time: once each.
        child = _DELIVERY_CHILDREN[outcome] = DELIVERIES.labels(outcome)
    child.inc()


_DELIVERY_CHILDREN: dict[str, Counter] = {}
"""``DELIVERIES``' child of each outcome counted so far in this process."""


def observe_delivery_latency(completed_at: datetime | None) -> None:
    """The latency of one call's outcome since its execution's ``completed_at``."""
    if completed_at is not None:
        when = completed_at if completed_at.tzinfo else completed_at.replace(tzinfo=UTC)
        DELIVERY_LATENCY.observe(max(0.0, time.time() - when.timestamp()))


def count_heartbeat(result: str) -> None:
    """Counts one heartbeat of the caller watch: ``sent``, ``cancel_requested``,
    ``gone`` or ``failed``."""
    HEARTBEATS.labels(result).inc()
