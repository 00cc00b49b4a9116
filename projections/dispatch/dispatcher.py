"""The completion dispatcher: replays each completed execution's callback token into Temporal.

It follows the ledger's notification log (``Completed`` events only) from its
recorded position, with a :class:`~projections.subscription.PollingSubscription`
(LISTEN/NOTIFY wake-ups on PostgreSQL, polling everywhere). For each completion:

1. it loads the execution and its :class:`~projections.delivery.Delivery`; a
   delivery whose outcome is recorded is never called again, whatever happened
   to the position (reset, restart, two runs at once);
2. it records ``Opened`` and ``Attempted`` for the whole page in one
   transaction, *before* any call (an empty token is resolved ``no_callback``
   there and then, with no call). Two dispatchers racing on a delivery conflict
   on its version, so only one of them calls;
3. it makes the calls concurrently (at most ``max_in_flight`` at once), each with
   its own bounded retries (:mod:`projections.dispatch.calls`);
4. it records outcomes as they arrive, in batches, each batch in one transaction
   with the dispatcher's tracking position: the highest ledger position below
   which every completion has its outcome recorded. A slow or dead callback
   holds up nobody's call or outcome, only that position, and only until its
   retries run out and it is ``parked``.

After a crash, it resumes after the recorded position: deliveries with an
attempt but no outcome are attempted again (NOT_FOUND then reads
``stale_after_attempt``), and recorded ones are skipped. Parked deliveries are
retried at start and by :meth:`Dispatcher.retry_parked`.

Nothing here ever resets the position or deletes a record. On a ledger that
already has completions, a first start begins at position zero unless the
operator explicitly asks to start at the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    RecordConflictError,
    Tracking,
)
from temporalio.client import Client

from ledger.application import open_ledger_with
from ledger.contract.errors import StoreUnavailableError
from ledger.contract.names import COMPLETED_TOPICS, LEDGER_LOG
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.domain.redaction import redact_token
from ledger.store.connections import setup_lock
from ledger.store.url import StoreConfig
from ledger.temporal.settings import TemporalSettings
from projections.dispatch.calls import CallbackResult, CallbackSender, RetryPolicy, call_for
from projections.dispatch.delivery import Delivery, Outcome
from projections.dispatch.leadership import CHECK_TIMEOUT, SingleActive
from projections.dispatch.log import DispatcherLog
from projections.subscription import PollingSubscription

logger = logging.getLogger(__name__)

STORE_ERRORS = (OperationalError, InterfaceError, StoreUnavailableError)
"""Errors that mean the store is unreachable for now (the library already retried)."""
T = TypeVar("T")


@dataclass
class DispatchStats:
    """Counts of one dispatcher run, by outcome."""

    outcomes: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Completions whose delivery was already recorded (no call made)."""

    def count(self, outcome: Outcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1


@dataclass
class _Job:
    position: int
    delivery: Delivery
    execution: Execution
    token: bytes


class _LockLostError(Exception):
    """The single-active lock was lost while a step waited for the store."""


class Dispatcher:
    """Follows the ledger and wakes each completed execution's caller."""

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
    ) -> None:
        self.config = config
        self.ledger = open_ledger_with(config, cache=False)
        with setup_lock(config):
            self.log = DispatcherLog(config.component_env("dispatcher"))
        self.sender = CallbackSender(client, retry)
        self.max_in_flight = max_in_flight
        self.page_size = page_size
        self.poll_interval = (
            poll_interval if poll_interval is not None else (1.0 if config.is_postgres else 0.1)
        )
        self.flush_interval = flush_interval
        self.start_at_head = start_at_head
        self.stats = DispatchStats()
        self._stop = asyncio.Event()
        self._resolved: list[Delivery] = []
        self._pending: dict[int, bool] = {}
        """Ledger positions seen and not yet covered by the tracking: done or not."""
        self._tracked = 0
        self._unrecorded: list[CanMutateAggregate[str]] = []
        """Outcome events collected and not yet recorded (kept across a failed write)."""
        self._flush_lock = threading.Lock()
        self._subscription: PollingSubscription | None = None
        self._active = SingleActive(config, "dispatcher")
        self._is_active = False
        self.lock_check_interval = lock_check_interval
        self._lost = asyncio.Event()
        """Set when the single-active lock was lost during a run."""

    # Public API.

    def stop(self) -> None:
        """Asks :meth:`run` to finish: no new calls; in-flight ones end and are recorded."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.wake()

    def close(self) -> None:
        self._active.release()
        self.ledger.close()
        self.log.close()

    @contextlib.asynccontextmanager
    async def _activity(self) -> AsyncIterator[bool]:
        """Holds the single-active lock (waiting for it) unless already held; yields
        False, not holding it, when :meth:`stop` is called while waiting."""
        if self._is_active:
            yield True
            return
        if not await self._active.acquire(self._stop):
            yield False
            return
        self._is_active = True
        try:
            yield True
        finally:
            self._is_active = False
            self._active.release()

    async def run(self, *, until_caught_up: bool = False) -> DispatchStats:
        """Follows the ledger until :meth:`stop` (or, with ``until_caught_up``, until
        a read finds nothing new and every call in flight is recorded).

        Waits first to be the one active dispatcher of this store, and checks every
        ``lock_check_interval`` seconds that it still is (see
        :meth:`SingleActive.held`). When the lock is lost (its connection ended: a
        server restart, a terminated backend), it starts no new call, lets the calls
        in flight end, records their outcomes if it can (else keeps them: see
        :meth:`_flush_or_keep`), and stands by again; another dispatcher may be
        active meanwhile. Once it holds the lock again it records what it kept (a
        delivery the other recorded meanwhile is left to it) and carries on from the
        recorded position. With ``until_caught_up`` it may so wait in standby while
        another dispatcher holds the lock. :meth:`stop` ends a standby too.
        """
        retaking = False
        while True:
            async with self._activity() as active:
                if not active or self._stop.is_set():
                    if not active:
                        await self._record_kept()
                    return self.stats
                self._lost.clear()
                watcher = asyncio.create_task(self._watch_lock())
                try:
                    await self._run(until_caught_up=until_caught_up)
                except _LockLostError:
                    pass  # Lost while a step waited for the store: stand by, as below.
                except STORE_ERRORS as e:
                    # Taking the lock again after a loss (a server restart): the store
                    # may still be coming back. Stand by and try again, as after a loss.
                    if not retaking or self._stop.is_set() or until_caught_up:
                        raise
                    logger.warning("store unavailable as the run started again (%s)", e)
                    self._lost.set()
                    await asyncio.sleep(self._active.poll_interval)
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
            if not self._lost.is_set() or self._stop.is_set():
                return self.stats
            retaking = True
            logger.error(
                "lost the single-active lock (its connection to the store ended); "
                "stopped calling Temporal, standing by to take the lock again"
            )

    async def _watch_lock(self) -> None:
        """Sets :attr:`_lost` (and wakes the run) when the single-active lock is gone."""
        while True:
            await asyncio.sleep(self.lock_check_interval)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a
                # cancellation that lands as the check returns, and the watcher would
                # then run on for ever, holding up the end of run().
                async with asyncio.timeout(CHECK_TIMEOUT * 2):
                    held = await asyncio.to_thread(self._active.held)
            except TimeoutError:
                held = False
            if not held:
                self._lost.set()
                if self._subscription is not None:
                    self._subscription.wake()
                return

    async def _run(self, *, until_caught_up: bool) -> DispatchStats:
        start = await self._outlasting_store(self._start_position)
        self._tracked = start
        if self._resolved or self._unrecorded:
            # Outcomes kept from before a lost lock: recorded before anything is
            # attempted again (those another dispatcher recorded meanwhile are its).
            await self._outlasting_store(self._flush)
        await self._retry_parked(self._outlasting_store)
        subscription = PollingSubscription(
            self.ledger.recorder,
            gt=start,
            topics=list(COMPLETED_TOPICS),
            poll_interval=self.poll_interval,
            page_size=self.page_size,
        )
        self._subscription = subscription
        slots = asyncio.Semaphore(self.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            with subscription:
                with contextlib.suppress(_LockLostError):
                    while not self._stop.is_set() and not self._lost.is_set():
                        page = await self._outlasting_store(
                            subscription.next_page, self.poll_interval
                        )
                        if not page and until_caught_up:
                            break
                        # The subscription has moved past this page: prepare it until it works.
                        for job in await self._outlasting_store(self._prepare, page):
                            await slots.acquire()
                            if self._stop.is_set() or self._lost.is_set():
                                # No new calls: the rest of the page stays attempted
                                # without an outcome, and is attempted again later.
                                slots.release()
                                break
                            task = asyncio.create_task(self._deliver(job, slots))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
        finally:
            flusher.cancel()
            flusher_error: BaseException | None = None
            try:
                await flusher
            except asyncio.CancelledError:
                pass
            except BaseException as e:  # Raised after the last flush below.
                flusher_error = e
            if self._lost.is_set():
                await self._flush_or_keep()
            else:
                await asyncio.to_thread(self._flush)
            if flusher_error is not None:
                raise flusher_error
        return self.stats

    async def _flush_or_keep(self) -> None:
        """After losing the lock: records the outcomes it can now; those it cannot
        are kept and recorded first when it holds the lock again (a delivery another
        dispatcher recorded meanwhile is left to it). The positions not recorded are
        forgotten: the next run starts from the recorded one."""
        try:
            await asyncio.to_thread(self._flush)
        except STORE_ERRORS as e:
            logger.warning(
                "single-active lock lost; %d outcome events kept until it is back (%s)",
                len(self._unrecorded) + len(self._resolved),
                e,
            )
        self._pending.clear()

    async def _outlasting_store(self, step: Callable[..., T], *args: Any) -> T:
        """Runs a blocking step, retrying with backoff while the store is unavailable
        (unless the single-active lock is lost meanwhile: :class:`_LockLostError`)."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(step, *args)
            except STORE_ERRORS as e:
                if self._stop.is_set():
                    raise
                if self._lost.is_set():
                    raise _LockLostError from e
                logger.warning("store unavailable (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def retry_parked(self) -> int:
        """Retries every parked delivery now (and any retry of one that was cut off
        between its attempt and its outcome); returns how many were called.

        Like :meth:`run`, it starts no new call once :meth:`stop` is called or the
        lock is lost: the deliveries not called yet stay attempted, and the next
        retry (or the next start) finds and retries them."""
        async with self._activity() as active:
            return await self._retry_parked(asyncio.to_thread) if active else 0

    async def _retry_parked(self, step: Callable[..., Awaitable[Any]]) -> int:
        """``step`` runs each blocking step: :func:`asyncio.to_thread` (a store error
        ends the retry) or :meth:`_outlasting_store` (within a run)."""
        parked: list[Delivery] = await step(self._parked_deliveries)
        jobs: list[_Job] = []
        for delivery in parked:
            execution: Execution = await step(self._execution, delivery.id)
            delivery.attempt(call_for(Phase(delivery.phase)))
            jobs.append(_Job(0, delivery, execution, execution.callback_token))
        if not jobs:
            return 0
        logger.info("retrying %d parked deliveries", len(jobs))
        await step(self.log.record, [j.delivery for j in jobs])
        slots = asyncio.Semaphore(self.max_in_flight)
        called = 0

        async def deliver(job: _Job) -> None:
            nonlocal called
            await slots.acquire()
            if self._stop.is_set() or self._lost.is_set():
                slots.release()  # No new call: it stays attempted, retried later.
                return
            called += 1
            await self._deliver(job, slots)

        await asyncio.gather(*(deliver(job) for job in jobs))
        if called < len(jobs):
            logger.warning(
                "stopped retrying parked deliveries: %d of %d not called, left for the next retry",
                len(jobs) - called,
                len(jobs),
            )
        await step(self._flush)
        return called

    async def _record_kept(self) -> None:
        """Stopped in standby with outcomes kept since a lost lock: records them now,
        each delivery on its own and without a position (a delivery another
        dispatcher recorded meanwhile is left to it). If the store still refuses,
        they are lost as in a crash, and the log says so: their deliveries stay
        attempted, and the next run settles them (``stale_after_attempt``)."""
        with self._flush_lock:
            events = self._take_outcomes()
        if not events:
            return
        try:
            await asyncio.to_thread(self._record_each, events)
        except STORE_ERRORS as e:
            logger.error(
                "stopping with %d outcome events not recorded, the store is unavailable (%s); "
                "their deliveries stay attempted and the next run settles them",
                len(events),
                e,
            )
            return
        del self._unrecorded[: len(events)]

    # Steps.

    def _parked_deliveries(self) -> list[Delivery]:
        return self.log.deliveries_to_retry(self.log.position() or 0)

    def _start_position(self) -> int:
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

    def _execution(self, execution_id: str) -> Execution:
        return cast(Execution, self.ledger.repository.get(execution_id))

    def _prepare(self, page: Sequence[Notification]) -> list[_Job]:
        """Loads the page's executions and deliveries; records Opened/Attempted before calls.

        If another dispatcher recorded some of these deliveries meanwhile, each
        completion is claimed on its own, and those the other one claimed are
        left to it.
        """
        try:
            return self._prepare_batch(page)
        except RecordConflictError:
            logger.warning("deliveries recorded concurrently by another dispatcher")
        jobs: list[_Job] = []
        for notification in page:
            try:
                jobs += self._prepare_batch([notification])
            except RecordConflictError:
                self._pending[notification.id] = True
                self.stats.skipped += 1
        return jobs

    def _prepare_batch(self, page: Sequence[Notification]) -> list[_Job]:
        jobs: list[_Job] = []
        touched: list[Delivery] = []
        counts: list[Outcome] = []
        done: list[int] = []
        for notification in page:
            # Not done until this page's records are written (a concurrent flush must
            # not record a position past it before then), nor, with a call, until its
            # outcome is resolved.
            self._pending[notification.id] = False
            execution_id = str(notification.originator_id)
            delivery = self.log.delivery(execution_id)
            if delivery is not None and (delivery.is_final or delivery.outcome is Outcome.PARKED):
                self.stats.skipped += 1
                done.append(notification.id)
                continue
            execution = cast(
                Execution,
                self.ledger.repository.get(execution_id, version=notification.originator_version),
            )
            completed = execution.outcome
            assert completed is not None
            token = execution.callback_token
            if delivery is None:
                delivery = Delivery.open(
                    execution_id,
                    kind=execution.kind_name,
                    phase=completed.phase,
                    completed_at=completed.timestamp,
                    has_callback=bool(token),
                    ledger_position=notification.id,
                )
            touched.append(delivery)
            if not token:
                delivery.resolve(Outcome.NO_CALLBACK, detail="spec.callback_token is empty")
                counts.append(Outcome.NO_CALLBACK)
                done.append(notification.id)
                continue
            delivery.attempt(call_for(Phase(completed.phase)))
            jobs.append(_Job(notification.id, delivery, execution, token))
        self.log.record(touched)
        for position in done:
            self._pending[position] = True
        for outcome in counts:
            self.stats.count(outcome)
        return jobs

    async def _deliver(self, job: _Job, slots: asyncio.Semaphore) -> None:
        try:
            try:
                result: CallbackResult = await self.sender.send(
                    job.execution,
                    job.token,
                    earlier_attempt_unconfirmed=job.delivery.unconfirmed_attempts > 0,
                )
            except Exception as e:  # A bug or an unforeseen error: park, never stall.
                logger.exception(
                    "callback for %s failed unexpectedly; parking it", job.execution.id
                )
                result = CallbackResult(
                    Outcome.PARKED,
                    call_for(Phase(job.delivery.phase)),
                    type(e).__name__,
                    str(e),
                )
            job.delivery.resolve(
                result.outcome,
                call=result.call.value,
                grpc_status=result.grpc_status,
                detail=result.detail[:1000],
            )
            self.stats.count(result.outcome)
            log = logger.warning if result.outcome is Outcome.PARKED else logger.debug
            log(
                "callback %s for %s (token %s) after %d tries",
                result.outcome.value,
                job.execution.id,
                redact_token(job.token),
                result.tries,
            )
            self._resolved.append(job.delivery)
            if job.position:
                self._pending[job.position] = True
        finally:
            slots.release()

    async def _flush_periodically(self) -> None:
        delay = self.flush_interval
        while True:
            await asyncio.sleep(delay)
            if self._resolved or self._unrecorded or self._watermark() > self._tracked:
                try:
                    await asyncio.to_thread(self._flush)
                except STORE_ERRORS as e:  # Kept in memory; tried again after a pause.
                    delay = min(max(delay * 2, 0.5), 10.0)
                    logger.warning("cannot record outcomes yet (%s); retrying in %.1fs", e, delay)
                    continue
            delay = self.flush_interval

    def _watermark(self) -> int:
        watermark = self._tracked
        for position in sorted(self._pending):
            if not self._pending[position]:
                break
            watermark = position
        return watermark

    def _flush(self) -> None:
        """Records resolved deliveries with the new position, in one transaction."""
        with self._flush_lock:
            # The position first: a delivery is marked done only after it joined
            # _resolved, so every outcome the position covers is among those taken next.
            watermark = self._watermark()
            events = self._take_outcomes()
            tracking = Tracking(LEDGER_LOG, watermark) if watermark > self._tracked else None
            try:
                self.log.record(events, tracking)
            except IntegrityError:
                # The position was recorded further by another run, or (after a lost
                # lock) another dispatcher recorded some of these deliveries: record
                # each delivery's outcome on its own, leaving those to the other.
                logger.warning(
                    "dispatcher position or deliveries recorded by another run; "
                    "recording outcomes one delivery at a time"
                )
                self._record_each(events)
            del self._unrecorded[: len(events)]
        if tracking is not None:
            self._tracked = watermark
            for position in [p for p in list(self._pending) if p <= watermark]:
                del self._pending[position]

    def _take_outcomes(self) -> list[CanMutateAggregate[str]]:
        """Moves the resolved deliveries' events to those not yet recorded, and
        returns all of these (the caller holds :attr:`_flush_lock`)."""
        resolved, self._resolved = self._resolved, []
        self._unrecorded += [e for delivery in resolved for e in delivery.collect_events()]
        return list(self._unrecorded)

    def _record_each(self, events: Sequence[CanMutateAggregate[str]]) -> None:
        by_delivery: dict[str, list[CanMutateAggregate[str]]] = {}
        for event in events:
            by_delivery.setdefault(str(event.originator_id), []).append(event)
        for delivery_id, own in by_delivery.items():
            try:
                self.log.record(own)
            except IntegrityError:
                logger.warning(
                    "delivery %s was recorded by another dispatcher meanwhile; "
                    "its record stands, this run's outcome for it is dropped",
                    delivery_id,
                )


async def connect_client(settings: TemporalSettings) -> Client:
    """Connects to Temporal, waiting with backoff (and saying so) until it answers."""
    delay = 0.2
    started = time.monotonic()
    while True:
        try:
            return await Client.connect(settings.address, **settings.connect_kwargs())  # type: ignore[arg-type]
        except RuntimeError as e:
            logger.warning(
                "Temporal at %s not reachable (%s); retrying in %.1fs (waiting %.0fs so far)",
                settings.address,
                e,
                delay,
                time.monotonic() - started,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


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
