"""Rebuilds of the views started from the console's projections page, and how they fare.

:class:`Rebuilds` starts a blue/green rebuild of one view
(:meth:`projections.views.Views.rebuild`: replayed beside the live tables, swapped in
in one transaction) in a **thread of the console process**, and keeps its progress
(log positions covered against the heads it rebuilds to, reported after each page)
for the pages and the live stream. The rebuild lock (an advisory lock on PostgreSQL,
an ``flock`` on SQLite: the one ``ledger projections rebuild`` takes) is taken in the
request that asks for the rebuild, so a refusal is answered there and then in one
line (this console's own rebuild of the view still running, or another process's,
e.g. a CLI rebuild); the thread then rebuilds under that lock and lets it go.

Why a thread and not a child process: the console already holds what a rebuild
needs (the store's settings and key); the progress callback feeds this state
directly, with no protocol to parse; a failure arrives as the typed error itself
(a poisoned event with "stop on error", a refused lock, a role that may not create
tables) and is shown as its one line; and the rebuild lives and dies with the
console: it goes on when the page is closed, a stopped console stops it at the next
page (its ``__next`` tables dropped, the old view untouched), and a killed one leaves
nothing running that nobody watches (the lock dies with the process, the next
rebuild drops what was left). The cost is the interpreter's lock: while a rebuild
decodes events, pages are served between its pages and answer more slowly, but
they answer, from the live tables (``ledger projections rebuild`` in a shell is the
way for a very large store on a busy console).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ledger.contract.errors import LedgerError
from ledger.store.url import StoreConfig
from projections.views import VIEW_NAMES, RebuildInProgressError, Views

logger = logging.getLogger(__name__)


class RebuildStoppedError(Exception):
    """The console is stopping: its rebuild gives up at the next page."""


@dataclass(frozen=True)
class RebuildState:
    """One rebuild asked from the console: who, when, how far, how it ended."""

    view: str
    requested_by: str
    started_at: datetime
    stop_on_error: bool
    done: int = 0
    """Log positions covered so far (summed over the logs the view follows)."""
    total: int | None = None
    """The heads it rebuilds to, summed (None until the first page is done)."""
    finished_at: datetime | None = None
    events: int | None = None
    """Events processed, once it succeeded."""
    error: str | None = None
    """Why it failed, one line (None: running or done)."""

    @property
    def running(self) -> bool:
        return self.finished_at is None


class Rebuilds:
    """The console's rebuilds: at most one per view, each in a thread of its own."""

    def __init__(self, config: StoreConfig, views: Views) -> None:
        self.config = config
        self._views = views
        """The console's views, for their rebuild locks only (no shared connection)."""
        self._guard = threading.Lock()
        self._states: dict[str, RebuildState] = {}
        self._refusals: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.changes = 0
        """Bumped on every change of a state (the live stream compares it)."""

    def states(self) -> dict[str, RebuildState]:
        """The last rebuild asked here of each view (running or ended), by view."""
        with self._guard:
            return dict(self._states)

    def refusal(self, name: str) -> str | None:
        """The last refusal to start a rebuild of view ``name`` (None: none)."""
        with self._guard:
            return self._refusals.get(name)

    def start(self, name: str, requested_by: str, *, stop_on_error: bool = False) -> str | None:
        """Starts rebuilding view ``name``; None once started, or the one line saying
        why not (already being rebuilt, here or by another process), which
        :meth:`refusal` then tells too. ValueError for an unknown view."""
        if name not in VIEW_NAMES:
            raise ValueError(f"unknown view {name!r}: expected one of {', '.join(VIEW_NAMES)}")
        refused = self._start(name, requested_by, stop_on_error)
        if refused is not None:
            refused = f"{refused} ({_now():%H:%M:%S} UTC)"
            with self._guard:
                self._refusals[name] = refused
                self.changes += 1
        return refused

    def _start(self, name: str, requested_by: str, stop_on_error: bool) -> str | None:
        with self._guard:
            if self._stop.is_set():
                return "the console is stopping"
            current = self._states.get(name)
            if current is not None and current.running:
                return (
                    f"the {name} view is already being rebuilt (asked here by "
                    f"{current.requested_by} at {current.started_at:%H:%M:%S} UTC): "
                    "wait for it to end"
                )
            lock = contextlib.ExitStack()
            try:
                lock.enter_context(self._views.rebuild_lock(name))
            except RebuildInProgressError as e:
                return str(e)
            except (LedgerError, OSError) as e:
                return f"the {name} view's rebuild lock could not be taken: {e}"
            state = RebuildState(name, requested_by, _now(), stop_on_error)
            self._states[name] = state
            self.changes += 1
            thread = threading.Thread(
                target=self._rebuild, args=(state, lock), name=f"rebuild {name}", daemon=True
            )
            self._threads.append(thread)
        thread.start()
        return None

    def _rebuild(self, state: RebuildState, lock: contextlib.ExitStack) -> None:
        name = state.view

        def progress(done: int, total: int) -> None:
            if self._stop.is_set():
                raise RebuildStoppedError("the console stopped before the rebuild ended")
            self._update(name, done=done, total=total)

        with lock:  # Held since the request; let go when the rebuild ends, however.
            try:
                views = Views(self.config, stop_on_error=state.stop_on_error)
                try:
                    events = views.rebuild(name, progress, lock_held=True)
                finally:
                    views.close()
            except Exception as e:
                line = " ".join(str(e).split()) or type(e).__name__
                logger.warning("console: the rebuild of the %s view failed: %s", name, line)
                self._update(name, finished_at=_now(), error=line)
                return
            logger.info("console: the %s view rebuilt (%d events)", name, events)
            self._update(name, finished_at=_now(), events=events)

    def _update(self, name: str, **changes: object) -> None:
        with self._guard:
            self._states[name] = replace(self._states[name], **changes)  # type: ignore[arg-type]
            self.changes += 1

    def close(self, timeout: float = 30) -> None:
        """Stops the running rebuilds at their next page (their tables dropped, the old
        views untouched) and waits for them, up to ``timeout`` seconds each."""
        with self._guard:
            self._stop.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=timeout)


def _now() -> datetime:
    return datetime.now(UTC)
