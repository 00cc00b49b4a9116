"""How a view is kept up to date: the abstract :class:`View`, and the :class:`Follower`
that feeds it one log's notifications, page by page.

A follower reads a page of notifications with
:class:`~projections.subscription.PollingSubscription` (LISTEN/NOTIFY wake-ups on
PostgreSQL, polling everywhere), has the view decode it outside any transaction,
then writes the page's rows and the page's last position in **one transaction**,
on the view recorder's own datastore. Events whose topic the view does not know
are skipped, but the position still moves past them.

The position moves as a compare-and-set (see :mod:`projections.views._dialects`),
so a second writer of the same view (a second ``projections run``, or a rebuild in
another process) never interleaves pages with this one: the loser of a race rolls
back, re-reads the position and carries on from there. Every event is applied
exactly once, whatever crashes, kills or races happen.

A catch-up reads and decodes the next page in a thread of its own while the
current one is written (:class:`_ReadAhead`); :func:`follow_live` runs followers
live, one thread each, retrying store errors with backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from eventsourcing.persistence import InterfaceError, Notification, OperationalError

from ledger.store.backoff import Backoff
from projections.subscription import PollingSubscription
from projections.views._dialects import PositionMovedError, Tx, ViewRecorder, ViewSchema
from projections.views._logs import LogReader
from projections.views._recorder import DeadLetter, PoisonedEventError, StaleViewError, scrub

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 5000
"""Events per page, hence per transaction, at most (a follower that keeps up writes
what has arrived, usually far less). Measured by ``bench/catchup.py``: a rebuild ran
at 28,800 events/s with pages of 500 and about 50,000 with pages of 5,000 (a
transaction and its round trips cost as much as ~1,000 events' rows, and an
execution's events mostly fall into one page, so it gets one row write, not several),
for about 20 MB more memory, which does not grow with the log."""

PREFETCH_PAGES = 1
"""Pages read and decoded ahead of the one being written, during a catch-up (with
pages of thousands of events, one is enough to keep the writer busy; more only hold
objects that the garbage collector then traverses again and again)."""


_T = TypeVar("_T")


class View(ABC, Generic[_T]):
    """A read model: decodes pages of one log's notifications, writes their rows.

    ``prepare`` runs outside any transaction; ``write`` inside the page's
    transaction, after the position moved.
    """

    name: ClassVar[str]
    schema: ClassVar[ViewSchema]

    def __init__(self, recorder: ViewRecorder, logs: Mapping[str, LogReader]) -> None:
        self.recorder = recorder
        self.logs = dict(logs)
        self._current = False

    def is_current(self) -> bool:
        """Whether the view's tables have the schema version this code reads (once
        seen current, a view stays so: a rebuild only ever swaps in current tables)."""
        if not self._current:
            self._current = self.recorder.schema_version() == self.schema.version
        return self._current

    def recheck(self) -> None:
        """Forgets whether the view was current (after its tables were swapped)."""
        self._current = False

    def check_current(self) -> None:
        """Raises :class:`StaleViewError` when the view's tables are of another version."""
        if not self.is_current():
            raise StaleViewError(self.name, self.recorder.schema_version(), self.schema.version)

    @property
    @abstractmethod
    def follows(self) -> Mapping[str, Sequence[str]]:
        """Application names of the logs followed -> topics wanted (() = all)."""

    @abstractmethod
    def prepare(self, log: LogReader, page: Sequence[Notification]) -> _T:
        """Decodes a page (no database access here)."""

    @abstractmethod
    def write(self, tx: Tx, log_name: str, prepared: _T) -> None:
        """Writes a decoded page's rows (inside the page's transaction)."""


class Follower:
    """Keeps one view up to date with one log, page by page.

    Its subscription may read ahead of the recorded position; whenever a page
    fails to commit, the follower re-reads the position and restarts from it
    before going on, so no page is skipped or applied twice.
    """

    def __init__(
        self,
        view: View[Any],
        log: LogReader,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        poll_interval: float = 1.0,
        listen: bool = False,
        stop_on_error: bool = False,
    ) -> None:
        self.view = view
        self.stop_on_error = stop_on_error
        self.log = log
        self.topics = list(view.follows[log.name])
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.listen = listen
        self.name = f"{view.name}<-{log.name}"
        self.events = 0
        """Notifications processed (written or skipped) by this follower."""
        self._recorded: int | None = None
        self._subscription: PollingSubscription | None = None
        self._stale = True
        self.resync()

    @property
    def position(self) -> int:
        """The position this follower knows is recorded (0 before any)."""
        return self._recorded or 0

    def resync(self) -> None:
        """Re-reads the recorded position and restarts reading from it."""
        self.close()
        self._recorded = self.view.recorder.max_tracking_id(self.log.name)
        self._subscription = PollingSubscription(
            self.log.recorder,
            gt=self.position,
            topics=self.topics,
            poll_interval=self.poll_interval,
            page_size=self.page_size,
            listen=self.listen,
        )
        self._subscription.__enter__()
        self._stale = False

    def stop(self) -> None:
        """Ends a wait in :meth:`step` early (the follower can be resumed with resync)."""
        if self._subscription is not None:
            self._subscription.stop()

    def close(self) -> None:
        """Ends the subscription; the next step or catch-up resyncs first."""
        if self._subscription is not None:
            self._subscription.__exit__(None, None, None)
            self._subscription = None
        self._stale = True

    def step(self, timeout: float) -> int:
        """Processes the next page (waiting up to ``timeout`` for one); returns its size.

        With a topic filter, a follower that finds nothing new records the head it
        read before looking, so its position (and lag) reaches the head too.
        """
        if self._stale:
            self.resync()
        assert self._subscription is not None
        try:
            head = self.log.head() if self.topics else 0
            page = self._subscription.next_page(timeout)
            if page:
                self._commit(page[-1].id, self.prepare(page))
                self.events += len(page)
            elif head > self.position:
                self._commit(head, None)
        except PositionMovedError:
            logger.info("%s: position moved by another writer; resuming from it", self.name)
            self.resync()
            return 0
        except BaseException:
            self._stale = True
            raise
        return len(page)

    def prepare(self, page: Sequence[Notification]) -> tuple[Any, list[DeadLetter]]:
        """The view's decoding of a page, and a dead letter for each event in it that
        cannot be decoded (or :class:`PoisonedEventError`, if ``stop_on_error``).

        A page that fails is decoded again one event at a time to find the culprits,
        then without them (pages that decode cost nothing more).
        """
        try:
            return self.view.prepare(self.log, page), []
        except (OperationalError, InterfaceError):
            raise
        except Exception as e:  # One bad event at least: found below.
            logger.debug("%s: a page failed to decode (%s); one event at a time", self.name, e)
        good: list[Notification] = []
        dead: list[DeadLetter] = []
        for notification in page:
            try:
                self.view.prepare(self.log, [notification])
            except (OperationalError, InterfaceError):
                raise
            except Exception as e:
                letter = DeadLetter(
                    self.name,
                    notification.id,
                    str(notification.originator_id),
                    notification.originator_version,
                    notification.topic,
                    scrub(e),
                )
                if self.stop_on_error:
                    raise PoisonedEventError(
                        f"{self.name}: the event at position {letter.position} "
                        f"({letter.event_id} v{letter.event_version}, {letter.topic}) cannot be "
                        f"read: {letter.error}; stopped (stop on error)"
                    ) from None
                logger.error(
                    "%s: dead letter at position %d (%s, %s): %s",
                    self.name,
                    letter.position,
                    letter.event_id,
                    letter.topic,
                    letter.error,
                )
                dead.append(letter)
            else:
                good.append(notification)
        return self.view.prepare(self.log, good), dead

    def _commit(self, position: int, prepared: Any) -> None:
        def body(tx: Tx) -> None:
            if prepared is not None:
                rows, dead = prepared
                self.view.write(tx, self.log.name, rows)
                self.view.recorder.record_dead_letters(tx, dead)

        self.view.recorder.write_page(self.log.name, self._recorded, position, body)
        self._recorded = position

    def catch_up(
        self, target: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Processes pages until the position reaches ``target`` (default: the head
        now); returns the number of notifications processed.

        Reading and decoding run a few pages ahead in a thread of their own
        (:class:`_ReadAhead`), so the next page is read while this one is written.
        """
        if target is None:
            target = self.log.head()
        processed = 0
        while self.position < target:
            if self._stale:
                self.resync()
            assert self._subscription is not None
            progressed = False
            try:
                with _ReadAhead(self, self._subscription, target) as pages:
                    for position, count, prepared in pages:
                        if position > self.position:
                            self._commit(position, prepared)
                            progressed = True
                        processed += count
                        self.events += count
                        if progress is not None:
                            progress(self.position)
            except PositionMovedError:
                logger.info("%s: position moved by another writer; resuming from it", self.name)
                self._stale = True
                continue
            except BaseException:
                self._stale = True
                raise
            if not progressed:
                logger.warning(
                    "%s: no events found up to %d (position %d)", self.name, target, self.position
                )
                break
        return processed


class _ReadAhead:
    """Reads and decodes a follower's next pages in a thread, into a small queue.

    Iterating yields ``(position, notifications, prepared)`` per page (``prepared``
    is None when a filtered follower only moves its position to the head, else
    :meth:`Follower.prepare`'s), until
    ``target`` is reached or nothing more is found. Errors in the thread are raised
    by the iteration. At most :data:`PREFETCH_PAGES` pages are held.
    """

    def __init__(self, follower: Follower, subscription: PollingSubscription, target: int) -> None:
        self.follower = follower
        self.subscription = subscription
        self.target = target
        self.pages: queue.Queue[tuple[int, int, Any] | BaseException | None] = queue.Queue(
            maxsize=PREFETCH_PAGES
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name=f"read {follower.name}", daemon=True)

    def __enter__(self) -> Iterator[tuple[int, int, Any]]:
        self.thread.start()
        return self._items()

    def __exit__(self, *args: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _items(self) -> Iterator[tuple[int, int, Any]]:
        while True:
            item = self.pages.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: tuple[int, int, Any] | BaseException | None) -> bool:
        while not self.stopping.is_set():
            try:
                self.pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        follower = self.follower
        last = follower.position
        try:
            while last < self.target and not self.stopping.is_set():
                head = follower.log.head() if follower.topics else 0
                page = self.subscription.next_page(0)
                item: tuple[int, int, Any]
                if page:
                    last = page[-1].id
                    item = (last, len(page), follower.prepare(page))
                elif head > last:
                    last = head  # Filtered: nothing wanted up to the head.
                    item = (last, 0, None)
                else:
                    break
                if not self._put(item):
                    return
        except BaseException as e:
            self._put(e)
        self._put(None)


RETRY_BACKOFF = Backoff(initial=0.1, maximum=5.0)
"""Waits between tries of a live follower whose store failed (a lost connection,
a lock timeout)."""


def follow_live(followers: Sequence[Follower], stop: threading.Event, timeout: float) -> None:
    """Runs each follower live in a thread of its own until ``stop`` is set.

    Each waits up to ``timeout`` for a page at a time. Store errors (a lost
    connection, a lock timeout) are logged and retried with :data:`RETRY_BACKOFF`,
    then the follower resyncs; any other error stops every follower and is raised
    here. The followers are closed on return.
    """
    errors: list[BaseException] = []
    failed = threading.Event()

    def follow(follower: Follower) -> None:
        tries = 0
        try:
            while not stop.is_set() and not failed.is_set():
                try:
                    follower.step(timeout)
                    tries = 0
                except (OperationalError, InterfaceError) as e:
                    if stop.is_set():
                        return
                    tries += 1
                    delay = RETRY_BACKOFF.delay(tries)
                    logger.warning("%s: %s; retrying in %.1fs", follower.name, e, delay)
                    stop.wait(delay)
                    follower.resync()
        except BaseException as e:
            errors.append(e)
            failed.set()

    threads = [
        threading.Thread(target=follow, args=(f,), name=f"view {f.name}", daemon=True)
        for f in followers
    ]
    for thread in threads:
        thread.start()
    try:
        while not stop.is_set() and not failed.is_set():
            stop.wait(0.1)
    finally:
        failed.set()
        for follower in followers:
            follower.stop()
        for thread in threads:
            thread.join()
        for follower in followers:
            follower.close()
    if errors:
        raise errors[0]
