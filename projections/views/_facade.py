"""The views' facade: :class:`Views` opens the ledger, the dispatcher's log and the
views store, and keeps every view up to date, rebuilds it, and reports its lag.

Rebuild
-------
:meth:`Views.rebuild` deletes the view's rows and its positions in one
transaction, then replays every log it follows from position zero, page by page,
until it reaches the heads it saw when it started (appends may go on meanwhile;
anything after is left to :meth:`Views.catch_up` / :meth:`Views.run`, which
pick up from the rebuilt position). It only reads the ledger and the dispatcher's
log: it never calls Temporal and never writes the dispatcher's records or
position.
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
    ) -> None:
        self.config = config
        self.page_size = page_size
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
                    )
                )
        return followers

    def catch_up(self, names: Sequence[str] = VIEW_NAMES) -> None:
        """Processes every view in ``names`` up to the current head of each log it follows."""
        for name in names:
            self.view(name)  # Unknown names fail before any work.
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
        follower = Follower(view, self.logs[log_name], page_size=self.page_size)
        try:
            return follower.catch_up()
        finally:
            follower.close()

    def run(self, stop: threading.Event, names: Sequence[str] = VIEW_NAMES) -> None:
        """Follows the logs live until ``stop`` is set (one thread per view and log).

        Store errors (a lost connection, a lock timeout) are logged and retried
        with backoff; any other error stops every follower and is raised here.
        """
        for name in names:
            self.view(name)
        follow_live(self._followers(names, listen=True), stop, self.poll_interval)

    def rebuild(self, name: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Drops the view's rows and positions and replays its logs from position zero.

        ``progress(done, total)`` is called after each page: log positions covered
        so far and in all (the heads when the rebuild started, summed over the logs
        followed). Returns the number of events processed. Appends may go on
        meanwhile; events after the starting heads are left to catch_up/run.
        """
        view = self.view(name)
        targets = {log_name: self.logs[log_name].head() for log_name in view.follows}
        total = sum(targets.values())
        view.recorder.reset()
        processed = 0
        done_before = 0
        for log_name in view.follows:
            follower = Follower(view, self.logs[log_name], page_size=self.page_size)
            try:

                def report(position: int, base: int = done_before) -> None:
                    if progress is not None:
                        done = base + position
                        progress(min(done, total), total)

                processed += follower.catch_up(targets[log_name], report)
                done_before += max(follower.position, targets[log_name])
            finally:
                follower.close()
        if progress is not None:
            progress(total, total)
        return processed

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
