"""The completion dispatcher: replays each completed execution's callback token into Temporal.

It follows the ledger's notification log (``Completed`` events only) from its
recorded position, with a :class:`~projections.subscription.PollingSubscription`
(LISTEN/NOTIFY wake-ups on PostgreSQL, same-process wake-ups on SQLite, polling
everywhere), reading and preparing the next page while the current page's calls
are in flight. For each completion:

1. it loads the execution and its :class:`~projections.dispatch.delivery.Delivery`
   (one query for the page's executions, one for their deliveries); a delivery
   whose outcome is recorded is never called again, whatever happened to the
   position (reset, restart, two runs at once);
2. it records ``Opened`` and ``Attempted`` for the whole page in one
   transaction, *before* any call (an empty token is resolved ``no_callback``
   there and then, with no call; an execution that cannot be read is parked as
   ``poisoned``, with no call). Two dispatchers racing on a delivery conflict
   on its version, so only one of them calls (:mod:`~projections.dispatch.preparation`);
3. it makes the calls concurrently (at most ``max_in_flight`` at once), each with
   its own bounded retries (:mod:`~projections.dispatch.in_flight`,
   :mod:`~projections.dispatch.calls`);
4. it records outcomes as they arrive, in batches, each batch in one transaction
   with the dispatcher's tracking position: the highest ledger position below
   which every completion has its outcome recorded
   (:mod:`~projections.dispatch.outcome_book`, :mod:`~projections.dispatch.flushing`).
   A slow or dead callback holds up nobody's call or outcome, only that
   position, and only until its retries run out and it is ``parked``.

Only one dispatcher of a store is active at a time
(:mod:`~projections.dispatch.leadership`); while the store is away, each step
waits for it (:mod:`~projections.dispatch.outage`).

After a crash, it resumes after the recorded position: deliveries with an
attempt but no outcome are attempted again (NOT_FOUND then reads
``stale_after_attempt``), and recorded ones are skipped. Parked deliveries are
retried at start, by :meth:`Dispatcher.retry_parked`, and, while a run is active,
when an operator asks for it (the console: :mod:`~projections.dispatch.retry_requests`,
looked at every ``lock_check_interval`` seconds).

Nothing here ever resets the position or deletes a record. On a ledger that
already has completions, a first start begins at position zero unless the
operator explicitly asks to start at the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from eventsourcing.persistence import Notification, Tracking
from temporalio.client import Client

from ledger.application import open_ledger_with
from ledger.contract.names import COMPLETED_TOPICS, LEDGER_LOG
from ledger.store import sqlite_wakeups
from ledger.store.backoff import Backoff
from ledger.store.connections import setup_lock
from ledger.store.url import StoreConfig
from ledger.temporal.settings import TemporalSettings
from projections.dispatch.callers import CallerWatch
from projections.dispatch.calls import CallbackSender, RetryPolicy, call_for, completed_phase
from projections.dispatch.delivery import POISONED, Delivery, Outcome
from projections.dispatch.flushing import OutcomeFlusher
from projections.dispatch.in_flight import DispatchStats, InFlightCalls, Job
from projections.dispatch.leadership import Leadership, SingleActive
from projections.dispatch.log import DispatcherLog
from projections.dispatch.outage import STORE_ERRORS, LockLostError, outlast_store
from projections.dispatch.outcome_book import OutcomeBook
from projections.dispatch.preparation import PagePreparer, park_poisoned
from projections.dispatch.reading import read_executions
from projections.dispatch.retry_requests import RetryRequests
from projections.subscription import PollingSubscription

__all__ = ["STORE_ERRORS", "DispatchStats", "Dispatcher", "connect_client", "run_dispatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TEMPORAL_BACKOFF = Backoff(initial=0.2, maximum=10.0)
CALLERS_BACKOFF = Backoff(initial=1.0, maximum=30.0)
"""Pauses before the caller watch starts again after a failure."""
"""Delays between tries to connect to Temporal when it does not answer."""


class Dispatcher:
    """Follows the ledger and wakes each completed execution's caller.

    Its parts, each replaceable in a test: :attr:`book` (what is in flight and
    what may be recorded), :attr:`preparer` (pages into jobs), :attr:`flusher`
    (outcomes into the log), :attr:`leadership` (the single-active lock) and
    :attr:`sender` (the Temporal calls). While active it also runs :attr:`callers`,
    the :class:`~projections.dispatch.callers.CallerWatch` (heartbeats, cancel
    requests, gone callers), unless ``watch_callers`` is False or the run is only
    catching up.
    """

    def __init__(
        self,
        config: StoreConfig,
        client: Client,
        *,
        max_in_flight: int = 64,
        page_size: int = 256,
        poll_interval: float | None = None,
        flush_interval: float = 0.05,
        retry: RetryPolicy | None = None,
        start_at_head: bool = False,
        lock_check_interval: float = 2.0,
        watch_callers: bool = True,
        probe_interval: float = 2.0,
    ) -> None:
        self.config = config
        self.ledger = open_ledger_with(config, cache=False)
        with setup_lock(config):
            self.log = DispatcherLog(config.component_env("dispatcher"))
        self.sender = CallbackSender(client, retry)
        self.max_in_flight = max_in_flight
        self.page_size = page_size
        self.poll_interval = (
            poll_interval if poll_interval is not None else (1.0 if config.is_postgres else 0.05)
        )
        self.start_at_head = start_at_head
        self.stats = DispatchStats()
        self.book = OutcomeBook()
        self.preparer = PagePreparer(self.ledger, self.log, self.book, self.stats)
        self.flusher = OutcomeFlusher(self.log, self.book, flush_interval=flush_interval)
        self.leadership = Leadership(
            SingleActive(config, "dispatcher"), check_interval=lock_check_interval
        )
        self.callers: CallerWatch | None = (
            CallerWatch(self.ledger, client, probe_interval=probe_interval)
            if watch_callers
            else None
        )
        self.retry_requests = RetryRequests(config)
        self._retrying = asyncio.Lock()
        """One retry of the parked deliveries at a time (at start, asked, requested)."""
        self._stop = asyncio.Event()
        self._subscription: PollingSubscription | None = None
        self._preparing_stopped = False

    # Public API.

    def stop(self) -> None:
        """Asks :meth:`run` to finish: no new calls; in-flight ones end and are recorded."""
        self._stop.set()
        self._wake()

    def close(self) -> None:
        """Releases the single-active lock and closes the store's connections."""
        self.leadership.release()
        self.ledger.close()
        self.log.close()

    async def run(self, *, until_caught_up: bool = False) -> DispatchStats:
        """Follows the ledger until :meth:`stop` (or, with ``until_caught_up``, until
        a read finds nothing new and every call in flight is recorded).

        Waits first to be the one active dispatcher of this store, and checks every
        ``lock_check_interval`` seconds that it still is (see
        :meth:`SingleActive.held`). When the lock is lost (its connection ended: a
        server restart, a terminated backend), it starts no new call, lets the calls
        in flight end, records their outcomes if it can (else keeps them: see
        :meth:`OutcomeFlusher.flush_or_keep`), and stands by again; another
        dispatcher may be active meanwhile. Once it holds the lock again it records
        what it kept (a delivery the other recorded meanwhile is left to it) and
        carries on from the recorded position. With ``until_caught_up`` it may so
        wait in standby while another dispatcher holds the lock. :meth:`stop` ends a
        standby too.
        """
        retaking = False
        while True:
            async with self.leadership.hold(self._stop) as active:
                if not active or self._stop.is_set():
                    if not active:
                        await self.flusher.record_kept()
                    return self.stats
                await self._while_active(until_caught_up=until_caught_up, retaking=retaking)
            if not self.leadership.lost.is_set() or self._stop.is_set():
                return self.stats
            retaking = True
            logger.error(
                "lost the single-active lock (its connection to the store ended); "
                "stopped calling Temporal, standing by to take the lock again"
            )

    async def retry_parked(self) -> int:
        """Retries every parked delivery now (and any retry of one that was cut off
        between its attempt and its outcome); returns how many were called.

        Like :meth:`run`, it starts no new call once :meth:`stop` is called or the
        lock is lost: the deliveries not called yet stay attempted, and the next
        retry (or the next start) finds and retries them."""
        async with self.leadership.hold(self._stop) as active:
            return await self._retry_parked(asyncio.to_thread) if active else 0

    # A run, while holding the lock.

    async def _while_active(self, *, until_caught_up: bool, retaking: bool) -> None:
        """Follows the ledger while the lock is held and watched; returns when the
        run ends or the lock is lost (:attr:`Leadership.lost` is then set)."""
        self.leadership.lost.clear()
        watcher = asyncio.create_task(self.leadership.watch(self._wake))
        callers_stop = asyncio.Event()
        callers = (
            asyncio.create_task(self._watch_callers(callers_stop))
            if self.callers is not None and not until_caught_up
            else None
        )
        requests = (
            None
            if until_caught_up
            else asyncio.create_task(self._answer_retry_requests(callers_stop))
        )
        try:
            await self._follow(until_caught_up=until_caught_up)
        except LockLostError:
            pass  # Lost while a step waited for the store: stand by, as after any loss.
        except STORE_ERRORS as e:
            # Taking the lock again after a loss (a server restart): the store may
            # still be coming back. Stand by and try again, as after a loss.
            if not retaking or self._stop.is_set() or until_caught_up:
                raise
            logger.warning("store unavailable as the run started again (%s)", e)
            self.leadership.lost.set()
            await asyncio.sleep(self.leadership.poll_interval)
        finally:
            callers_stop.set()
            if callers is not None:
                await callers
            if requests is not None:
                await requests
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_callers(self, stop: asyncio.Event) -> None:
        """Runs the caller watch while active; a failure of it never stops the
        completions: it is logged and the watch starts again after a pause."""
        assert self.callers is not None
        delays = CALLERS_BACKOFF.delays()
        while not stop.is_set():
            try:
                await self.callers.run(stop)
            except Exception:
                logger.exception("the caller watch failed; starting it again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next(delays))

    async def _answer_retry_requests(self, stop: asyncio.Event) -> None:
        """While active, every ``lock_check_interval`` seconds: when operators asked
        for a retry of the parked deliveries (:class:`RetryRequests`), retries them
        once for all the open requests and marks those done. A failure is logged
        (once while it lasts) and the requests stay open, answered at a later look."""
        failing = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.leadership.check_interval)
            if stop.is_set() or self._no_new_calls():
                return
            try:
                ids = await asyncio.to_thread(self.retry_requests.open_ids)
                failing = False
                if not ids:
                    continue
                logger.info("an operator asked to retry the parked deliveries")
                retried = await self._retry_parked(self._outlasting_store)
                if self._no_new_calls():
                    return  # Stopped or lost mid-retry: the requests stay open.
                await asyncio.to_thread(self.retry_requests.done, ids, retried)
            except LockLostError:
                return
            except Exception as e:  # The store away, most often: said once, tried again.
                if not failing:
                    logger.warning("cannot answer retry requests yet (%s); they stay open", e)
                failing = True

    async def _follow(self, *, until_caught_up: bool) -> None:
        """Starts at the recorded position and calls for each completion, recording
        outcomes as they come, until stopped, caught up, or the lock is lost."""
        start = await self._outlasting_store(self._start_position)
        self.book.restart_at(start)
        if self.book.has_outcomes:
            # Outcomes kept from before a lost lock: recorded before anything is
            # attempted again (those another dispatcher recorded meanwhile are its).
            await self._outlasting_store(self.flusher.flush)
        await self._retry_parked(self._outlasting_store)
        subscription = PollingSubscription(
            self.ledger.recorder,
            gt=start,
            topics=list(COMPLETED_TOPICS),
            poll_interval=self.poll_interval,
            page_size=self.page_size,
        )
        self._subscription = subscription
        calls = self._in_flight()
        flushing = asyncio.create_task(self.flusher.flush_periodically())
        unsubscribe = (
            sqlite_wakeups.subscribe(self.config.env["SQLITE_DBNAME"], subscription.wake)
            if self.config.is_sqlite
            else None
        )
        try:
            with subscription:
                with contextlib.suppress(LockLostError):
                    await self._call_for_each_page(subscription, calls, until_caught_up)
                await calls.wait()
        finally:
            if unsubscribe is not None:
                unsubscribe()
            await self._flush_last(flushing)

    async def _call_for_each_page(
        self, subscription: PollingSubscription, calls: InFlightCalls, until_caught_up: bool
    ) -> None:
        """Starts the calls of page after page, while the next page is read and
        prepared beside them (:meth:`_prepare_pages`), so the calls in flight never
        drain while completions wait."""
        ready: asyncio.Queue[list[Job] | None] = asyncio.Queue()
        taken = asyncio.Semaphore(0)
        self._preparing_stopped = False
        preparing = asyncio.create_task(
            self._prepare_pages(subscription, until_caught_up, ready, taken)
        )
        try:
            while (jobs := await ready.get()) is not None:
                taken.release()  # The next page may be read and prepared meanwhile.
                for job in jobs:
                    if not await calls.start(job, refused=self._no_new_calls):
                        # No new calls: the rest stays attempted without an outcome,
                        # and is attempted again later.
                        self._stop_preparing(taken)
                        break
        finally:
            self._stop_preparing(taken)
            await preparing  # Never cancelled mid-step: a page is prepared whole.

    def _stop_preparing(self, taken: asyncio.Semaphore) -> None:
        self._preparing_stopped = True
        self._wake()
        taken.release()

    async def _prepare_pages(
        self,
        subscription: PollingSubscription,
        until_caught_up: bool,
        ready: asyncio.Queue[list[Job] | None],
        taken: asyncio.Semaphore,
    ) -> None:
        """Reads and prepares pages in order, one page ahead of the calls: the next
        is read once the last one was taken. Ends the queue with ``None``.

        The first page after a start or a wait holds at most ``max_in_flight``
        completions, and each next one twice as many, up to ``page_size``: the first
        calls start after a small page is prepared, and the larger ones are prepared
        while calls are in flight."""
        limit = self.max_in_flight
        target = await self._outlasting_store(self._committed_head) if until_caught_up else 0
        readable = False
        try:
            while not self._no_new_calls() and not self._preparing_stopped:
                # Caught up: a read that finds nothing, begun once every event committed
                # before the run started was readable (a transaction elsewhere in the
                # cluster holds the readable head back for a while: wait for it).
                readable = readable or (
                    until_caught_up and await self._outlasting_store(self._readable_reaches, target)
                )
                page = await self._outlasting_store(self._next_page, subscription, limit)
                limit = min(2 * limit, self.page_size) if page else self.max_in_flight
                if not page:
                    if readable:
                        return
                    continue
                if self._preparing_stopped:
                    # Read but not prepared: nothing recorded, nothing opened; the
                    # next run reads it again from the recorded position.
                    return
                # The subscription has moved past this page: prepare it until it works.
                jobs = await self._outlasting_store(self.preparer.prepare, page)
                await ready.put(jobs)
                await taken.acquire()
        finally:
            ready.put_nowait(None)

    async def _flush_last(self, flushing: asyncio.Task[None]) -> None:
        """Stops the periodic flush and records what is left (after a lost lock:
        what it can, keeping the rest). An error of the periodic flush is raised
        after that."""
        flushing.cancel()
        error: BaseException | None = None
        try:
            await flushing
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # Raised after the last flush below.
            error = e
        if self.leadership.lost.is_set():
            await self.flusher.flush_or_keep()
        else:
            await asyncio.to_thread(self.flusher.flush)
        if error is not None:
            raise error

    async def _retry_parked(self, step: Callable[..., Awaitable[Any]]) -> int:
        """``step`` runs each blocking step: :func:`asyncio.to_thread` (a store error
        ends the retry) or :meth:`_outlasting_store` (within a run). One at a time."""
        async with self._retrying:
            return await self._retry_parked_now(step)

    async def _retry_parked_now(self, step: Callable[..., Awaitable[Any]]) -> int:
        parked: list[Delivery] = await step(self._parked_deliveries)
        if not parked:
            return 0
        completions = await step(read_executions, self.ledger, [d.id for d in parked])
        jobs: list[Job] = []
        touched: list[Delivery] = []
        still_poisoned = 0
        for delivery, completion in zip(parked, completions, strict=True):
            execution = completion.execution
            if execution is None:
                if delivery.outcome is Outcome.PARKED and delivery.parked_reason == POISONED:
                    still_poisoned += 1  # Stays parked as it is: nothing new to record.
                    continue
                touched.append(park_poisoned(completion, delivery))
                self.stats.count(Outcome.PARKED)
                continue
            touched.append(delivery)
            if not execution.callback_token:  # A poisoned one that reads again, tokenless.
                delivery.resolve(Outcome.NO_CALLBACK, detail="spec.callback_token is empty")
                self.stats.count(Outcome.NO_CALLBACK)
                continue
            delivery.attempt(call_for(completed_phase(execution)))
            jobs.append(Job(0, delivery, execution, execution.callback_token))
        if still_poisoned:
            logger.warning(
                "%d parked deliveries stay parked: their executions still cannot be read "
                "(ledger dispatcher parked lists them with the reason)",
                still_poisoned,
            )
        if touched:
            await step(self.log.record, touched)
        if not jobs:
            return 0
        logger.info("retrying %d parked deliveries", len(jobs))
        calls = self._in_flight()
        called = 0
        for job in jobs:  # A job not called stays attempted, retried later.
            if await calls.start(job, refused=self._no_new_calls):
                called += 1
        await calls.wait()
        if called < len(jobs):
            logger.warning(
                "stopped retrying parked deliveries: %d of %d not called, left for the next retry",
                len(jobs) - called,
                len(jobs),
            )
        await step(self.flusher.flush)
        return called

    # Helpers.

    def _no_new_calls(self) -> bool:
        """Whether to start no new call: asked to stop, or the lock is lost."""
        return self._stop.is_set() or self.leadership.lost.is_set()

    def _wake(self) -> None:
        """Ends the subscription's wait for new completions, if it waits."""
        if self._subscription is not None:
            self._subscription.wake()

    def _in_flight(self) -> InFlightCalls:
        """Fresh slots for the calls of one run (or one retry)."""
        return InFlightCalls(self.sender, self.book, self.stats, max_in_flight=self.max_in_flight)

    async def _outlasting_store(self, step: Callable[..., T], *args: Any) -> T:
        """Runs a blocking step, waiting out store outages (see :func:`outlast_store`)."""
        return await outlast_store(step, *args, stop=self._stop, lost=self.leadership.lost)

    # Blocking steps (run in a worker thread).

    def _committed_head(self) -> int:
        """The ledger's largest committed notification id, readable or not (0 on a
        store without a readable head: there, what is committed is readable)."""
        head = getattr(self.ledger.recorder, "committed_head", None)
        return int(head()) if head is not None else 0

    def _readable_reaches(self, target: int) -> bool:
        """Whether the ledger's readable head is at ``target`` or beyond."""
        horizon = getattr(self.ledger.recorder, "horizon", None)
        if horizon is None or target == 0:
            return True
        horizon.observe()
        return (horizon.readable or 0) >= target

    def _next_page(self, subscription: PollingSubscription, limit: int) -> list[Notification]:
        return subscription.next_page(self.poll_interval, limit=min(limit, self.page_size))

    def _parked_deliveries(self) -> list[Delivery]:
        return self.log.deliveries_to_retry(self.log.position() or 0)

    def _start_position(self) -> int:
        """The recorded position; on a first start, zero or (as asked) the head."""
        recorded = self.log.position()
        if recorded is not None:
            return recorded
        if self.start_at_head:
            head = self.ledger.recorder.max_notification_id() or 0
            logger.warning("dispatcher starting at the head of the ledger (%d), as asked", head)
            if head:
                self.log.record([], Tracking(LEDGER_LOG, head))
            return head
        return 0


async def connect_client(settings: TemporalSettings) -> Client:
    """Connects to Temporal, waiting with backoff (and saying so) until it answers."""
    started = time.monotonic()
    tries = 0
    while True:
        try:
            return await Client.connect(**settings.connect_config())
        except RuntimeError as e:
            tries += 1
            delay = TEMPORAL_BACKOFF.delay(tries)
            logger.warning(
                "Temporal at %s not reachable (%s); retrying in %.1fs (waiting %.0fs so far)",
                settings.address,
                e,
                delay,
                time.monotonic() - started,
            )
            await asyncio.sleep(delay)


async def run_dispatcher(
    config: StoreConfig,
    settings: TemporalSettings,
    *,
    until_caught_up: bool = False,
    start_at_head: bool = False,
    max_in_flight: int = 64,
) -> DispatchStats:
    """Connects, then runs a dispatcher until SIGINT/SIGTERM (or caught up)."""
    import signal

    client = await connect_client(settings)
    dispatcher = Dispatcher(
        config, client, start_at_head=start_at_head, max_in_flight=max_in_flight
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, dispatcher.stop)
    try:
        return await dispatcher.run(until_caught_up=until_caught_up)
    finally:
        await asyncio.to_thread(dispatcher.close)
