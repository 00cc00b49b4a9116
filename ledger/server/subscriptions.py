"""``subscribe``: every change of one execution, read from the ledger's log.

One :class:`LogFollower` per server process follows the ledger's notification log
(:class:`~projections.subscription.PollingSubscription`: LISTEN/NOTIFY wake-ups
on PostgreSQL, polling everywhere) from the head it found at start, and for each
event of an execution someone subscribed to, wakes that subscription. It carries
no events: a subscription, once woken, reads its execution's events after the
last version it sent, from the store, at its own pace
(:meth:`ledger.application.Ledger.changes`), and sends the resource after each,
one at a time, as fast as its client takes them (gRPC flow control). So nothing
is missed or repeated however slow a client is, and what a subscription holds is
bounded (a wake-up flag and the execution's current state), whatever happens
meanwhile. The server's own writes wake the follower at once; writes by other
processes are seen at its next poll or notification. As a safety net a
subscription also re-reads every :data:`RECHECK_SECONDS` without a wake-up.

A stream sends the current resource (its version in the initial metadata
``x-version``: each message after it is the next version), then every change in
the ledger's order, and ends (OK) after the terminal phase. With request metadata
``x-from-version: N`` it starts after version N instead (N = the last version a
client received: no gap, no repeat). When the server stops, open streams end with
``UNAVAILABLE``: resume elsewhere with ``x-from-version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.application import Ledger
from ledger.contract.kinds import Resource
from projections.subscription import PollingSubscription

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0
"""A subscription re-reads its execution this often even without a wake-up."""
BATCH = 100
"""Events read per store query by a subscription."""


class LogFollower:
    """Follows the ledger's log in one thread; wakes the subscriptions of each execution
    that has new events."""

    def __init__(
        self, ledger: Ledger, loop: asyncio.AbstractEventLoop, *, poll_interval: float = 0.5
    ) -> None:
        self._ledger = ledger
        self._loop = loop
        self._poll_interval = poll_interval
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscription: PollingSubscription | None = None
        self._thread = threading.Thread(target=self._follow, name="ledger-serve-log", daemon=True)
        self.closing = False
        """Set when the server stops: open streams end with UNAVAILABLE."""

    def start(self) -> None:
        self._position = self._ledger.recorder.max_notification_id() or 0
        self._thread.start()

    def wake(self) -> None:
        """Reads the log now (new events are expected: this server just wrote)."""
        subscription = self._subscription
        if subscription is not None:
            subscription.wake()

    def register(self, execution_id: str) -> asyncio.Event:
        """An event set whenever ``execution_id`` may have new events (and at close)."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(execution_id, set()).add(event)
        return event

    def unregister(self, execution_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiting = self._waiters.get(execution_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[execution_id]

    def close(self) -> None:
        """Ends every open stream (UNAVAILABLE) and stops following."""
        self.closing = True
        with self._lock:
            events = [event for waiting in self._waiters.values() for event in waiting]
        for event in events:
            self._loop.call_soon_threadsafe(event.set)
        self._stop.set()
        subscription = self._subscription
        if subscription is not None:
            subscription.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with PollingSubscription(
                    self._ledger.recorder, gt=self._position, poll_interval=self._poll_interval
                ) as subscription:
                    self._subscription = subscription
                    while not self._stop.is_set():
                        page = subscription.next_page()
                        if page:
                            self._notify({str(n.originator_id) for n in page})
                            self._position = page[-1].id
                        backoff = 0.1
            except (OperationalError, InterfaceError) as e:
                logger.warning("following the log: %s; retrying in %.1fs", e, backoff)
                self._notify(None)  # Subscriptions re-read: nothing is lost meanwhile.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._subscription = None

    def _notify(self, execution_ids: set[str] | None) -> None:
        with self._lock:
            if execution_ids is None:
                events = [e for waiting in self._waiters.values() for e in waiting]
            else:
                events = [e for i in execution_ids for e in self._waiters.get(i, ())]
        for event in events:
            self._loop.call_soon_threadsafe(event.set)


class ClosingError(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE."""

    code = grpc.StatusCode.UNAVAILABLE
    message = "the server is stopping; resume with x-from-version on another connection"


async def follow_execution(
    ledger: Ledger,
    follower: LogFollower,
    execution_id: str,
    after: int,
    run: Callable[..., Awaitable[Any]],
) -> AsyncIterator[Resource]:
    """The resources after version ``after`` of one execution, one per event, until its
    terminal phase (``run`` calls a blocking function off the event loop)."""
    event = follower.register(execution_id)
    try:
        changes = ledger.changes(execution_id, after=after)
        while True:
            if follower.closing:
                raise ClosingError
            event.clear()
            records = await run(changes.next, BATCH)
            for record in records:
                yield record.resource
            if changes.is_terminal:
                return
            if not records:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), RECHECK_SECONDS)
    finally:
        follower.unregister(execution_id, event)
