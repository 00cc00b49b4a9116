"""The views' facade: :class:`Views` opens the ledger, the dispatcher's log and the
views store, and keeps every view up to date, rebuilds it, and reports its lag.

Rebuild
-------
:meth:`Views.rebuild` builds the view afresh beside the live one and swaps it in
once caught up (blue/green, :mod:`projections.views._rebuild`): readers see the
old rows until then, whatever happens to the rebuild. It only reads the ledger and
the dispatcher's log: it never calls Temporal and never writes the dispatcher's
records or position.

Schema versions
---------------
A view whose tables are of another schema version than its code is *stale*:
reading it or catching it up raises :class:`StaleViewError`; :meth:`Views.run`
rebuilds stale views before following them.

Dead letters
------------
An event a follower cannot decode is recorded as a dead letter of the view
(:meth:`Views.dead_letters`) and the follower carries on, unless the views were
opened with ``stop_on_error``: then it raises :class:`PoisonedEventError`.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.application import open_ledger_with
from ledger.contract.names import COMPLETED_TOPICS
from ledger.store.horizon import committed_head
from ledger.store.url import StoreConfig
from projections.dispatch.log import DispatcherLog
from projections.views._dialects import ViewStore
from projections.views._follower import DEFAULT_PAGE_SIZE, Follower, View, follow_live
from projections.views._logs import LogReader, last_notification_id
from projections.views._rebuild import rebuild, rebuild_lock
from projections.views._recorder import DeadLetter, RebuildInProgressError
from projections.views.audit import AuditView
from projections.views.status import StatusView

VIEW_NAMES: tuple[str, ...] = ("status", "audit")
"""Every view, in the order :meth:`Views.catch_up` and :meth:`Views.run` take them."""


@dataclass(frozen=True)
class Lag:
    """How far a follower is behind the log it follows."""

    name: str
    """``<follower><-<log>``, e.g. ``status<-Ledger``, ``dispatcher<-Ledger``."""
    position: int
    """The last notification id the follower has recorded (0 before any)."""
    head: int
    """The head of the log it follows (see :meth:`Views.lag` for each head)."""

    @property
    def lag(self) -> int:
        """Notifications (ids) between the position and the head."""
        return self.head - self.position


class Views:
    """The read models: open them, keep them up to date, rebuild them, see their lag."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        poll_interval: float | None = None,
        stop_on_error: bool = False,
    ) -> None:
        self.config = config
        self.page_size = page_size
        self.stop_on_error = stop_on_error
        """A poisoned event stops its follower (PoisonedEventError) instead of becoming
        a dead letter."""
        self.poll_interval = (
            poll_interval if poll_interval is not None else (1.0 if config.is_postgres else 0.1)
        )
        with contextlib.ExitStack() as opened:
            self.ledger = open_ledger_with(config, cache=False)  # A follower only reads.
            opened.callback(self.ledger.close)
            self.dispatcher_log = DispatcherLog(config.component_env("dispatcher"))
            opened.callback(self.dispatcher_log.close)
            self.store = ViewStore(config.component_env("views"))
            opened.callback(self.store.close)
            logs = {
                self.ledger.name: LogReader(self.ledger),
                self.dispatcher_log.name: LogReader(self.dispatcher_log),
            }
            self.logs = logs
            self.status: StatusView = StatusView(self.store.recorder(StatusView.schema), logs)
            self.audit: AuditView = AuditView(self.store.recorder(AuditView.schema), logs)
            opened.pop_all()  # Opened: close() closes them from now on.
        self._views: dict[str, View[Any]] = {"status": self.status, "audit": self.audit}

    def view(self, name: str) -> View[Any]:
        """The view called ``name`` (one of :data:`VIEW_NAMES`); ValueError otherwise."""
        try:
            return self._views[name]
        except KeyError:
            raise ValueError(
                f"unknown view {name!r}: expected one of {', '.join(self._views)}"
            ) from None

    def _followers(self, names: Sequence[str], *, listen: bool = False) -> list[Follower]:
        followers: list[Follower] = []
        for name in names:
            view = self.view(name)
            for log_name in view.follows:
                followers.append(
                    Follower(
                        view,
                        self.logs[log_name],
                        page_size=self.page_size,
                        poll_interval=self.poll_interval,
                        listen=listen,
                        stop_on_error=self.stop_on_error,
                    )
                )
        return followers

    def stale(self, names: Sequence[str] = VIEW_NAMES) -> list[str]:
        """Those of ``names`` whose tables are of another schema version than their code."""
        return [name for name in names if not self.view(name).is_current()]

    def catch_up(self, names: Sequence[str] = VIEW_NAMES) -> None:
        """Processes every view in ``names`` up to the current head of each log it
        follows; StaleViewError (before any work) if one of them is stale."""
        for name in names:
            self.view(name).check_current()  # Unknown or stale: fail before any work.
        for follower in self._followers(names):
            try:
                follower.catch_up()
            finally:
                follower.close()

    def catch_up_log(self, name: str, log_name: str) -> int:
        """Catches one view up with one of its logs only; returns notifications processed."""
        view = self.view(name)
        if log_name not in view.follows:
            raise ValueError(f"view {name!r} does not follow {log_name!r}")
        view.check_current()
        follower = Follower(
            view, self.logs[log_name], page_size=self.page_size, stop_on_error=self.stop_on_error
        )
        try:
            return follower.catch_up()
        finally:
            follower.close()

    def run(
        self,
        stop: threading.Event,
        names: Sequence[str] = VIEW_NAMES,
        on_rebuild: Callable[[str], None] | None = None,
    ) -> None:
        """Follows the logs live until ``stop`` is set (one thread per view and log).

        A stale view is rebuilt first (``on_rebuild(name)`` is called before), or,
        when another process is rebuilding it, waited for. Store errors (a lost
        connection, a lock timeout) are logged and retried with backoff; any other
        error stops every follower and is raised here.
        """
        for name in names:
            self.view(name)
        for name in self.stale(names):
            while not stop.is_set() and not self.view(name).is_current():
                if on_rebuild is not None:
                    on_rebuild(name)
                try:
                    self.rebuild(name)
                except RebuildInProgressError:
                    stop.wait(self.poll_interval * 5)
        if stop.is_set():
            return
        follow_live(self._followers(names, listen=True), stop, self.poll_interval)

    def rebuild(
        self,
        name: str,
        progress: Callable[[int, int], None] | None = None,
        *,
        lock_held: bool = False,
    ) -> int:
        """Rebuilds the view blue/green (see :mod:`projections.views._rebuild`): replays
        its logs from zero into tables beside the live ones, swaps them in once caught
        up. ``progress(done, total)`` is called after each page (log positions covered
        so far and in all: the heads when it started). Returns the events processed.
        RebuildInProgressError if another process is rebuilding it (unless
        ``lock_held``: the caller holds :meth:`rebuild_lock` already).
        """
        return rebuild(
            self.config,
            self.store,
            self.view(name),
            page_size=self.page_size,
            stop_on_error=self.stop_on_error,
            progress=progress,
            lock_held=lock_held,
        )

    def rebuild_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The rebuild lock of view ``name`` (held while the block runs), or
        RebuildInProgressError at once when another rebuild holds it. Not tied to a
        thread: one thread may take it and another rebuild under it."""
        return rebuild_lock(self.config, self.store, self.view(name).name)

    def dead_letters(self, names: Sequence[str] = VIEW_NAMES) -> list[DeadLetter]:
        """Every dead letter of the views in ``names``, by follower and position."""
        letters: list[DeadLetter] = []
        for name in names:
            letters += self.view(name).recorder.dead_letters()
        return letters

    def lag(self) -> list[Lag]:
        """Each view's position against the head of each log it follows, and the
        dispatcher's (``dispatcher<-Ledger``).

        Heads: the last notification id committed in the log followed (on PostgreSQL
        possibly beyond the readable head, see :mod:`ledger.store.horizon`); for the dispatcher,
        which only follows ``Completed`` events and records a position only once
        every completion up to it has its outcome, the id of the last ``Completed``
        event in the ledger.
        """
        lags: list[Lag] = []
        # Positions first, heads after: a follower that moves meanwhile can make a lag
        # look larger than it is, never negative.
        positions = {name: view.recorder.positions() for name, view in self._views.items()}
        dispatcher_position = self.dispatcher_log.process_recorder.max_tracking_id(self.ledger.name)
        # Committed heads, readable or not: events held back behind a long transaction
        # count as lag (``ledger projections status`` says what holds them back).
        heads = {log_name: committed_head(log.recorder) for log_name, log in self.logs.items()}
        for name, view in self._views.items():
            for log_name in view.follows:
                lags.append(
                    Lag(
                        f"{view.name}<-{log_name}",
                        positions[name].get(log_name, 0),
                        heads[log_name],
                    )
                )
        lags.append(
            Lag(
                f"dispatcher<-{self.ledger.name}",
                dispatcher_position or 0,
                last_notification_id(self.ledger.recorder, COMPLETED_TOPICS),
            )
        )
        return lags

    def close(self) -> None:
        """Closes the views store, the ledger and the dispatcher's log."""
        self.store.close()
        self.ledger.close()
        self.dispatcher_log.close()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


def freeze_startup_objects() -> None:
    """Takes every object alive now out of the garbage collector's sight (``gc.freeze``).

    For a process about to follow or rebuild views for a long time, once its
    stores are open (``ledger projections run`` and ``rebuild`` call it): the
    modules, applications and connections made at start-up are never garbage, yet
    every full collection traverses them all. A catch-up promotes a page of events
    to the oldest generation about once a page, so full collections run that often;
    with the start-up objects frozen each costs a few milliseconds instead of ~40
    (measured here: a rebuild spent 2 us of its ~17 us per event in them, 0.25
    once frozen). Objects made afterwards are collected as usual; a start-up
    object that later becomes garbage inside a reference cycle is never freed (a
    bounded, one-time cost).
    """
    gc.collect()
    gc.freeze()
