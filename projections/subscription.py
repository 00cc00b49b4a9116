"""A subscription to the ledger's notification log that polls, and listens where it can.

The library's SQLite recorder has no ``subscribe`` (9.5.6 raises
``NotImplementedError``), and its PostgreSQL subscription relies on
LISTEN/NOTIFY alone, so a lost notification or a killed LISTEN connection can
stall a follower silently. :class:`PollingSubscription` is built on the
library's own :class:`~eventsourcing.persistence.Subscription` base: it reads
pages of notifications after the last one it returned, and between pages it
waits for a wake-up or the poll interval, whichever comes first. On PostgreSQL a
background thread LISTENs on the recorder's channel and wakes it early; when
that connection dies the thread reconnects with backoff, and polling carries
on meanwhile, so nothing stalls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Notification, Subscription
from eventsourcing.postgres import PostgresApplicationRecorder

from ledger.store.backoff import Backoff
from ledger.store.committed import select_committed
from ledger.store.horizon import ReadHorizon

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500

MAX_PASSED = 10_000
"""Ids an :class:`EagerSubscription` keeps asking for, at most; beyond, it reads up to
the readable head (in order) until they are resolved."""

RECONNECT_BACKOFF = Backoff(initial=0.1, maximum=5.0)
"""Waits between tries to reconnect a lost LISTEN connection (polling goes on meanwhile)."""


class PollingSubscription(Subscription[ApplicationRecorder]):
    """Catch-up then live, in pages; iterating yields one notification at a time."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        *,
        poll_interval: float = 1.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        listen: bool = True,
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._woken = threading.Event()
        self._buffer: list[Notification] = []
        self._listener: threading.Thread | None = None
        if listen and isinstance(recorder, PostgresApplicationRecorder):
            self._listener = threading.Thread(
                target=self._listen, args=(recorder,), name="ledger-listen", daemon=True
            )
            self._listener.start()

    @property
    def position(self) -> int:
        """The id of the last notification returned (0 before the first)."""
        return self._last_notification_id or 0

    def wake(self) -> None:
        """Ends the current wait early (new events are expected)."""
        self._woken.set()

    def stop(self) -> None:
        super().stop()
        self._woken.set()

    def next_page(
        self, timeout: float | None = None, *, limit: int | None = None
    ) -> list[Notification]:
        """The next page after :attr:`position` (at most ``limit`` notifications, default
        :attr:`page_size`); waits up to ``timeout`` when caught up.

        Returns an empty list when nothing new arrived within the timeout (default:
        the poll interval) or when the subscription is stopped.
        """
        if self._buffer:
            page, self._buffer = self._buffer, []
            return page
        page = self._select(limit)
        if page or self._has_been_stopped:
            return page
        self._woken.wait(self.poll_interval if timeout is None else timeout)
        self._woken.clear()
        if self._has_been_stopped:
            return []
        return self._select(limit)

    def __next__(self) -> Notification:
        while not self._buffer:
            if self._has_been_stopped:
                raise StopIteration
            self._buffer = self.next_page()
        return self._buffer.pop(0)

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)
        if self._listener is not None:
            self._listener.join(timeout=5)

    def _select(self, limit: int | None = None) -> list[Notification]:
        notifications = self._recorder.select_notifications(
            start=self._last_notification_id or 0,
            limit=limit or self.page_size,
            topics=self._topics,
            inclusive_of_start=False,
        )
        if notifications:
            self._last_notification_id = notifications[-1].id
        return list(notifications)

    def _listen(self, recorder: PostgresApplicationRecorder) -> None:
        from psycopg import sql

        tries = 0
        while not self._has_been_stopped:
            try:
                with recorder.datastore.get_connection() as conn:
                    conn.execute(
                        sql.SQL("LISTEN {0}").format(sql.Identifier(recorder.channel_name))
                    )
                    tries = 0
                    while not self._has_been_stopped:
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._woken.set()
            except Exception as e:
                if self._has_been_stopped:
                    return
                logger.warning("LISTEN connection lost (%s); reconnecting, polling meanwhile", e)
                self._woken.set()  # Poll now: a notification may have been missed.
                tries += 1
                threading.Event().wait(RECONNECT_BACKOFF.delay(tries))


class EagerSubscription(PollingSubscription):
    """A :class:`PollingSubscription` that does not wait for the readable head: each
    event once, as soon as it is committed, but **not always in notification id
    order** (on PostgreSQL, where ids commit out of order).

    Each read returns what is committed now above the last id returned, and the ids
    it passed on the way that were not committed yet
    (:func:`~ledger.store.committed.select_committed`).
    A passed id is asked for again at every read until it is returned or the
    readable head (:mod:`ledger.store.horizon`) is at or beyond it after a read that
    did not return it: it was rolled back, or never drawn by a writer. So every
    committed event is returned exactly once; one whose transaction commits late comes
    after events with higher ids. For a follower that orders events itself (``ledger
    serve``'s ``subscribe`` orders each execution's by version). Elsewhere (SQLite,
    memory: one writer at a time) it reads as :class:`PollingSubscription`.
    """

    def __init__(self, recorder: ApplicationRecorder, gt: int | None = None, **kwargs: Any) -> None:
        super().__init__(recorder, gt, **kwargs)
        if self._topics:
            raise ValueError("an eager subscription reads every topic")
        horizon = getattr(recorder, "horizon", None)
        self._horizon: ReadHorizon | None = horizon if isinstance(horizon, ReadHorizon) else None
        self._passed: set[int] = set()

    @property
    def position(self) -> int:
        """Every id up to it has been returned or will never be (a restart from it
        misses nothing)."""
        last = self._last_notification_id or 0
        return min(self._passed) - 1 if self._passed else last

    @property
    def passed(self) -> int:
        """Ids passed and asked for again at each read (not committed when passed)."""
        return len(self._passed)

    def _select(self, limit: int | None = None) -> list[Notification]:
        horizon = self._horizon
        if horizon is None:
            return super()._select(limit)
        readable = 0
        if self._passed:
            horizon.observe()  # Moves the readable head on: passed ids become final.
            readable = horizon.readable or 0
        last = self._last_notification_id or 0
        notifications = select_committed(
            self._recorder, last, limit or self.page_size, self._passed
        )
        passed = self._passed
        expected = last + 1
        for n, notification in enumerate(notifications):
            if notification.id in passed:
                passed.discard(notification.id)
            elif notification.id > last:
                if len(passed) + notification.id - expected > MAX_PASSED:
                    # Too far to pass: the rest as the readable head allows, in order.
                    del notifications[n:]
                    if expected > last + 1:
                        self._last_notification_id = expected - 1
                    return notifications + super()._select(limit)
                passed.update(range(expected, notification.id))
                expected = notification.id + 1
        if passed and readable:
            # Not returned by a read that began after they became final: gone for good.
            passed.difference_update([i for i in passed if i <= readable])
        if expected > last + 1:
            self._last_notification_id = expected - 1
        return notifications
