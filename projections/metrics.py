"""The store's state as metrics, read when Prometheus scrapes: followers, heads, lag,
parked callbacks.

:class:`StoreMetrics` is a ``prometheus_client`` collector. At each scrape it reads,
through a :class:`~projections.views.Views` of its own (its own connections, so a
scrape never waits on a follower's), the position of every follower (the views and
the dispatcher) and the head of the log it follows, the age of the oldest event a
follower has not processed yet, and, from the audit view, the callbacks pending and
parked. Every process with ``--metrics-address`` exports them, so any one scrape
shows the whole picture; a read that fails shows as ``ledger_store_up 0``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from eventsourcing.application import Application
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.contract.names import COMPLETED_TOPICS
from ledger.store.horizon import committed_head, horizon_report
from ledger.store.url import StoreConfig
from projections.views import Views

logger = logging.getLogger(__name__)

_PARKED_SCAN_PAGES = 20
"""Pages of the audit's pending list read to find the oldest parked callback."""


class StoreMetrics(Collector):
    """Positions, heads, lag and parked callbacks, read from the store per scrape."""

    def __init__(self, config: StoreConfig, views: Views | None = None) -> None:
        self.config = config
        self._views = views
        self._owned = views is None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "ledger_store_up", "1 if the last scrape read the store's state, else 0."
        )
        with self._lock:
            try:
                families = self._read()
            except Exception as e:
                logger.warning("metrics: cannot read the store's state: %s", e)
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up
        yield from families

    def close(self) -> None:
        if self._owned and self._views is not None:
            self._views.close()
            self._views = None

    def _open(self) -> Views:
        if self._views is None:
            self._views = Views(self.config)
        return self._views

    def _read(self) -> list[GaugeMetricFamily]:
        views = self._open()
        now = time.time()
        position = GaugeMetricFamily(
            "ledger_follower_position",
            "The last log position (notification id) a follower has recorded.",
            labels=["follower"],
        )
        lag_events = GaugeMetricFamily(
            "ledger_follower_lag_events",
            "Positions between a follower's position and the head of the log it follows.",
            labels=["follower"],
        )
        lag_seconds = GaugeMetricFamily(
            "ledger_follower_lag_seconds",
            "Age of the oldest event a follower has not processed yet (0 when caught up).",
            labels=["follower"],
        )
        head = GaugeMetricFamily(
            "ledger_log_head", "The last position (notification id) of a log.", labels=["log"]
        )
        logs: dict[str, Application[Any]] = {
            views.ledger.name: views.ledger,
            views.dispatcher_log.name: views.dispatcher_log,
        }
        held_back = GaugeMetricFamily(
            "ledger_log_held_back_events",
            "Notification ids committed but not readable yet: followers wait for the oldest "
            "transaction running in the cluster (PostgreSQL; see ledger.store.horizon).",
            labels=["log"],
        )
        held_back_seconds = GaugeMetricFamily(
            "ledger_log_held_back_seconds",
            "Age of the oldest transaction running while it holds a log's followers back "
            "(0 when nothing is held back).",
            labels=["log"],
        )
        for name, app in logs.items():
            # The committed head (never waits; held-back events count as lag).
            head.add_metric([name], committed_head(app.recorder))
            report = horizon_report(app.recorder, wait=0.1)
            held_back.add_metric([name], report.held_back if report else 0)
            since = report.holder.since if report and report.holder else None
            held_back_seconds.add_metric(
                [name], max(0.0, now - since.timestamp()) if since is not None else 0.0
            )
        lags = views.lag()
        for lag in lags:
            position.add_metric([lag.name], lag.position)
            lag_events.add_metric([lag.name], max(0, lag.lag))
            follower, _, log_name = lag.name.partition("<-")
            age = 0.0
            if lag.lag > 0 and log_name in logs:
                topics = COMPLETED_TOPICS if follower == "dispatcher" else ()
                age = _age_of_next(logs[log_name], lag.position, topics, now)
            lag_seconds.add_metric([lag.name], age)
        parked, oldest = _parked(views, now)
        counts = views.audit.outcome_counts()
        parked_family = GaugeMetricFamily(
            "ledger_parked_deliveries",
            "Callbacks parked after their retries ran out (per the audit view).",
            value=counts.get("parked", 0),
        )
        pending_family = GaugeMetricFamily(
            "ledger_pending_deliveries",
            "Completed executions whose callback has no outcome yet (per the audit view).",
            value=counts.get("pending", 0),
        )
        oldest_family = GaugeMetricFamily(
            "ledger_oldest_parked_age_seconds",
            "Age of the oldest parked callback's completion (0 when none is parked).",
            value=oldest if parked else 0.0,
        )
        families = [
            position,
            head,
            held_back,
            held_back_seconds,
            lag_events,
            lag_seconds,
            parked_family,
            pending_family,
            oldest_family,
        ]
        dead = _dead_letters(views, [lag.name for lag in lags])
        if dead is not None:
            families.append(dead)
        return families


def _age_of_next(
    app: Application[Any], position: int, topics: tuple[str, ...], now: float
) -> float:
    """Seconds since the first event after ``position`` (of ``topics``) was recorded."""
    page = app.recorder.select_notifications(start=position + 1, limit=1, topics=topics)
    if not page:
        return 0.0
    event: Any = app.mapper.to_domain_event(page[0])
    return max(0.0, now - float(event.timestamp.timestamp()))


def _dead_letters(views: Views, followers: list[str]) -> GaugeMetricFamily | None:
    """``ledger_dead_letters{follower}``, where the views keep dead letters (events a
    view could not process, set aside: ``Views.dead_letters``); None where they do not."""
    letters_of = getattr(views, "dead_letters", None)
    if letters_of is None:
        return None
    counts = Counter(str(getattr(letter, "follower", "")) for letter in letters_of())
    family = GaugeMetricFamily(
        "ledger_dead_letters",
        "Events a view could not process and set aside, by follower.",
        labels=["follower"],
    )
    for name in sorted({*followers, *counts}):
        family.add_metric([name], counts.get(name, 0))
    return family


def _parked(views: Views, now: float) -> tuple[int, float]:
    """(whether any parked row was seen, the oldest parked completion's age)."""
    after = None
    for _ in range(_PARKED_SCAN_PAGES):
        rows = views.audit.pending(limit=500, after=after)
        for row in rows:
            if row.outcome == "parked" and row.completed_at is not None:
                return 1, max(0.0, now - row.completed_at.timestamp())
        if len(rows) < 500:
            break
        after = rows[-1]
    return 0, 0.0


def register_store_metrics(config: StoreConfig, views: Views | None = None) -> StoreMetrics:
    """Registers a :class:`StoreMetrics` on the default registry; returns it."""
    collector = StoreMetrics(config, views)
    REGISTRY.register(collector)
    return collector
