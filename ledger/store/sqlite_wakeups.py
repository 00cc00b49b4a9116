"""Same-process wake-ups on SQLite: a follower learns of a write at once.

SQLite has no LISTEN/NOTIFY, so a follower of an SQLite ledger (the dispatcher)
polls. When the writer is in the follower's own process (the demo, tests, an
embedded deployment), :class:`WakingSQLiteApplicationRecorder`, the ledger's
recorder on SQLite, tells every follower that :func:`subscribe` d to the same
database file after each committed write, so it reads at once instead of at its
next poll. Another process's writes are still found by polling.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder

__all__ = ["WakingSQLiteApplicationRecorder", "subscribe", "written"]

_lock = threading.Lock()
_followers: dict[str, set[Callable[[], None]]] = {}


def _key(db_name: str) -> str:
    return os.path.realpath(db_name) if db_name and ":memory:" not in db_name else db_name


def subscribe(db_name: str, wake: Callable[[], None]) -> Callable[[], None]:
    """Calls ``wake()`` after each write to ``db_name`` in this process; returns the
    function that ends it. ``wake`` must be quick and thread-safe."""
    key = _key(db_name)
    with _lock:
        _followers.setdefault(key, set()).add(wake)

    def unsubscribe() -> None:
        with _lock:
            followers = _followers.get(key)
            if followers is not None:
                followers.discard(wake)
                if not followers:
                    del _followers[key]

    return unsubscribe


def written(db_name: str) -> None:
    """Wakes the followers of ``db_name`` (a write to it committed)."""
    if not _followers:
        return
    with _lock:
        followers = list(_followers.get(_key(db_name), ()))
    for wake in followers:
        wake()


class WakingSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    """The library's SQLite recorder, waking this process's followers after a write."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super().insert_events(stored_events, **kwargs)
        written(self.datastore.pool.db_name)
        return ids
