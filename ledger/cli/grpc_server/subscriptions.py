"""``subscribe``: every change of one execution, read from the ledger's log.

One :class:`LogFollower` per server process follows the ledger's notification log
(:class:`~projections.subscription.EagerSubscription`: LISTEN/NOTIFY wake-ups
on PostgreSQL, polling everywhere; each event as soon as it is committed, without
waiting for the transactions running elsewhere in the cluster, so not always in
notification id order) from the head it found at start, and for each
page, wakes the subscriptions of the executions in it, in one call onto the event
loop, handing each execution's events to its :class:`_Feed`. The subscriptions of
one execution share that feed: it applies the follower's events when they follow on
from its last version, and otherwise reads the execution's new events from the store,
once for all of them (:meth:`ledger.application.Ledger.changes`), only when the
follower has seen something new since its last read; it keeps the last
:data:`WINDOW` resources; a subscription sends the resources after the last version it sent, one
at a time, as fast as its client takes them (gRPC flow control). One that falls
behind the window reads the store at its own pace instead. So nothing is missed or
repeated however slow a client is, what a subscription holds is bounded, and a
thousand streams of fifty executions cost fifty reads a change, not a thousand.
The server's own writes wake the follower at once; writes by other
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
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from eventsourcing.persistence import InterfaceError, Notification, OperationalError

from ledger.application import ExecutionChanges, ExecutionRecord, Ledger
from ledger.contract.kinds import Resource
from projections.subscription import EagerSubscription

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0
"""A subscription re-reads its execution this often even without a wake-up."""
BATCH = 100
"""Events read per store query by a subscription."""
WINDOW = 256
"""Resources a feed keeps for the subscriptions of its execution that are behind."""


class LogFollower:
    """Follows the ledger's log in one thread; wakes the subscriptions of each execution
    that has new events."""

    def __init__(
        self, ledger: Ledger, loop: asyncio.AbstractEventLoop, *, poll_interval: float = 0.5
    ) -> None:
        self._ledger = ledger
        self._loop = loop
        self._poll_interval = poll_interval
        self._waiters: dict[str, set[Wakeup]] = {}
        self._signals: dict[str, int] = {}
        self._epoch = 0
        self._feeds: dict[str, _Feed] = {}
        self._expiries = _Expiries(loop)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscription: EagerSubscription | None = None
        self._pages = 0
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

    def register(self, execution_id: str) -> Wakeup:
        """A wake-up set whenever ``execution_id`` may have new events (and at close)."""
        event = Wakeup(self._loop, self._expiries)
        with self._lock:
            self._waiters.setdefault(execution_id, set()).add(event)
        return event

    def unregister(self, execution_id: str, event: Wakeup) -> None:
        with self._lock:
            waiting = self._waiters.get(execution_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[execution_id]
                    self._feeds.pop(execution_id, None)
                    self._signals.pop(execution_id, None)

    def signal(self, execution_id: str) -> tuple[int, int]:
        """What the follower has seen of ``execution_id`` so far: it grows whenever new
        events of the execution may exist. A feed that read the store after seeing a
        signal need not read again until the signal grows. (On the event loop's thread:
        a signal changes there, with the events handed to the feed.)"""
        return self._epoch, self._signals.get(execution_id, 0)

    def feed(self, execution_id: str) -> _Feed:
        """The shared reader of ``execution_id``'s changes (while it has subscriptions;
        called on the event loop's thread)."""
        feed = self._feeds.get(execution_id)
        if feed is None:
            feed = self._feeds[execution_id] = _Feed(self._ledger, execution_id, self.signal)
        return feed

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
                with EagerSubscription(
                    self._ledger.recorder, gt=self._position, poll_interval=self._poll_interval
                ) as subscription:
                    self._subscription = subscription
                    while not self._stop.is_set():
                        page = subscription.next_page()
                        if page:
                            self._pages += 1
                            self._notify(page, self._pages)
                        # Every event up to it was handed over (or never will be).
                        self._position = subscription.position
                        backoff = 0.1
            except (OperationalError, InterfaceError) as e:
                logger.warning("following the log: %s; retrying in %.1fs", e, backoff)
                self._notify(None, 0)  # Subscriptions re-read: nothing is lost meanwhile.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._subscription = None

    def _notify(self, page: Sequence[Notification] | None, position: int) -> None:
        """Signals each execution of ``page`` that has subscriptions (every one when
        None: after a lost connection), and hands its events to its feed, in one call
        onto the event loop."""
        offers: dict[str, list[Notification]] = {}
        with self._lock:
            if page is None:
                events = [e for waiting in self._waiters.values() for e in waiting]
            else:
                for notification in page:
                    execution_id = str(notification.originator_id)
                    if execution_id in self._waiters:
                        offers.setdefault(execution_id, []).append(notification)
                events = [e for i in offers for e in self._waiters[i]]
        if events:
            self._loop.call_soon_threadsafe(self._wake, offers, position, events, page is None)

    def _wake(
        self,
        offers: dict[str, list[Notification]],
        position: int,
        events: list[Wakeup],
        everything: bool,
    ) -> None:
        """On the event loop: the signals and the feeds' events change together, so a
        feed never sees a signal without the events that came with it."""
        if everything:
            self._epoch += 1
        for execution_id, stored in offers.items():
            if execution_id in self._waiters:
                self._signals[execution_id] = position
                feed = self._feeds.get(execution_id)
                if feed is not None:
                    feed.offer(stored, (self._epoch, position))
        for event in events:
            event.set()


class _Expiries:
    """When waits end without a wake-up: one loop timer per second of deadline for all
    the waits due then (a timer per wait costs a heap push and a cancellation on every
    change of every stream). A wait ends up to a second after its timeout."""

    __slots__ = ("_due", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, set[Wakeup]] = {}

    def add(self, wakeup: Wakeup, timeout: float) -> int:
        second = math.ceil(self._loop.time() + timeout)
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = set()
            self._loop.call_at(second, self._expire, second)
        due.add(wakeup)
        return second

    def discard(self, wakeup: Wakeup, second: int) -> None:
        due = self._due.get(second)
        if due is not None:
            due.discard(wakeup)

    def _expire(self, second: int) -> None:
        for wakeup in self._due.pop(second, ()):
            wakeup.expire()


class Wakeup:
    """One subscription's wake-up, set on the event loop's thread (as an
    ``asyncio.Event`` is, but waited for with a timeout without a task or a timer of
    its own: ``asyncio.wait_for`` would start a task per wait, a loop hop more per
    change; see :class:`_Expiries`)."""

    __slots__ = ("_expiries", "_future", "_loop", "is_set")

    def __init__(self, loop: asyncio.AbstractEventLoop, expiries: _Expiries | None = None) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self.is_set = False
        self._expiries = expiries if expiries is not None else _Expiries(loop)

    def set(self) -> None:
        self.is_set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        self.is_set = False

    def expire(self) -> None:
        """Ends the current wait (not set)."""
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Until set (True) or until ``timeout`` seconds (up to one more) pass (False)."""
        if self.is_set:
            return True
        future = self._future = self._loop.create_future()
        second = self._expiries.add(self, timeout)
        try:
            await future
        finally:
            self._expiries.discard(self, second)
            self._future = None
        return self.is_set


class ClosingError(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE."""

    code = grpc.StatusCode.UNAVAILABLE
    message = "the server is stopping; resume with x-from-version on another connection"


class _Feed:
    """One execution's changes, read from the store once for all its subscriptions."""

    def __init__(
        self, ledger: Ledger, execution_id: str, signal: Callable[[str], tuple[int, int]]
    ) -> None:
        self._ledger = ledger
        self._execution_id = execution_id
        self._signal = signal
        self._read_at: tuple[int, int] | None = None
        self._offered: list[Notification] = []
        self._offered_at: tuple[int, int] | None = None
        self._changes: ExecutionChanges | None = None
        self._records: list[ExecutionRecord] = []
        self._lock = asyncio.Lock()
        self.terminal = False
        """Whether the execution's last read resource is in a terminal phase."""

    def offer(self, stored: list[Notification], signal: tuple[int, int]) -> None:
        """Events of the execution the follower read from the log (as of ``signal``):
        the next subscription at the feed's tip applies them without a query."""
        self._offered = (self._offered + stored)[-WINDOW:]
        self._offered_at = signal

    def nothing_after(self, version: int) -> bool:
        """Whether :meth:`after` would return [] without a read (``version`` is the feed's
        tip, nothing new was offered or signalled): a subscription that has just sent
        the tip learns so without the feed's lock."""
        changes = self._changes
        return (
            changes is not None
            and changes.version == version
            and not self._offered
            and not self._lock.locked()
            and self._read_at == self._signal(self._execution_id)
        )

    async def after(
        self, version: int, run: Callable[..., Awaitable[Any]], *, recheck: bool = False
    ) -> list[ExecutionRecord] | None:
        """The resources after ``version`` (reading the store when none is known yet, once
        for every subscription waiting); None when ``version`` is behind the window.

        New events come from the follower's page when they follow on from the feed's
        last version; otherwise the store is read, and only when the follower has seen
        something of the execution since the last read (or on ``recheck``): twenty
        subscriptions that have sent everything cost nothing when they look again."""
        async with self._lock:
            if self._changes is None:
                self._changes = self._ledger.changes(self._execution_id, after=version)
            known = self._changes.version
            if version > known:  # Ahead of the feed (it started further back): jump.
                self._changes = self._ledger.changes(self._execution_id, after=version)
                self._records = []
                self._read_at = None
                known = version
            if version == known:
                records = None
                if self._offered and not recheck:
                    records = self._changes.apply(self._offered)
                    if records is not None:
                        self._read_at = self._offered_at
                    self._offered = []
                signal = self._signal(self._execution_id)
                if records is None and (recheck or self._read_at != signal):
                    self._read_at = signal
                    records = await run(self._changes.next, BATCH)
                if records:
                    self._records = (self._records + records)[-WINDOW:]
                self.terminal = self._changes.is_terminal
            if version < known and (not self._records or self._records[0].version > version + 1):
                return None
            if not self._records or self._records[-1].version <= version:
                return []
            # Consecutive versions: the ones after ``version`` by position.
            return self._records[max(0, version + 1 - self._records[0].version) :]


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
    own: ExecutionChanges | None = None  # Reading alone, when behind the feed's window.
    recheck = False
    try:
        sent = after
        while True:
            if follower.closing:
                raise ClosingError
            event.clear()
            feed = follower.feed(execution_id)
            if own is None and not recheck and feed.nothing_after(sent):
                shared: list[ExecutionRecord] | None = []
            else:
                shared = None if own is not None else await feed.after(sent, run, recheck=recheck)
            recheck = False
            if shared is None:
                if own is None:
                    own = ledger.changes(execution_id, after=sent)
                records = await run(own.next, BATCH)
                terminal = own.is_terminal
                if not records:
                    own = None  # Caught up with the store: back to the shared feed.
            else:
                records, terminal = shared, feed.terminal
            for record in records:
                sent = record.version
                yield record.resource
            if terminal:  # Every reader stops at its reader's tip, which it has now sent.
                return
            if not records:
                recheck = not await event.wait(RECHECK_SECONDS)
    finally:
        follower.unregister(execution_id, event)
