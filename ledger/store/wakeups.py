"""Waking followers on PostgreSQL without a ``NOTIFY`` in every insert.

PostgreSQL serialises the commits of all notifying transactions on one lock
(held from before the commit record until the commit ends, WAL flush included),
so a ``NOTIFY`` inside every insert makes writers queue behind each other again,
as a table lock would: measured here at 16 threads, inserts with it ran at 0.15
of plain inserts, without it at 1.09 (README, Benchmarks). Instead, after an
insert commits, the recorder *pokes* its :class:`Wakeups`; a thread of its own
sends one ``pg_notify`` on the recorder's channel at most every
:data:`WAKE_INTERVAL` seconds, in a transaction of its own that does not wait for
its WAL flush (``synchronous_commit`` off), so it holds that lock only briefly and
no writer waits for it. A wake-up is only a hint: a lost one (the thread's
connection failed, the process ended first) costs a follower its poll interval,
never an event. Pokes still pending when the process exits are sent then.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ledger.store._prepared import PreparedStatement, on_connection

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresDatastore

__all__ = ["WAKE_INTERVAL", "Wakeups"]

logger = logging.getLogger(__name__)

WAKE_INTERVAL = 0.005
"""Seconds between two wake-ups sent by one process for one log, at least."""

_SEND = b"SELECT set_config('synchronous_commit', 'off', true), pg_notify($1::text, '')"


class Wakeups:
    """Throttled wake-ups of one log's followers (thread-safe)."""

    def __init__(self, datastore: PostgresDatastore, channel: str) -> None:
        self.datastore = datastore
        self.channel = channel
        self.sent = 0
        """Wake-ups sent so far."""
        self._lock = threading.Lock()
        self._pending = False
        self._poked = threading.Event()
        self._thread: threading.Thread | None = None
        self._statement = PreparedStatement(datastore, _SEND)

    def poke(self) -> None:
        """Something was committed: a wake-up is sent soon (cheap; never blocks)."""
        if self._pending:
            return
        with self._lock:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_run, args=(weakref.ref(self),), name="ledger-wakeups", daemon=True
                )
                self._thread.start()
                atexit.register(_flush_at_exit, weakref.ref(self))
        self._poked.set()

    def flush(self) -> None:
        """Sends a pending wake-up now (at exit: the thread may not get to it)."""
        if self._pending:
            self._pending = False
            self._send()

    def _send(self) -> None:
        try:
            on_connection(self.datastore, self._execute)
            self.sent += 1
        except Exception as e:  # A hint only: followers poll anyway.
            logger.debug("wake-up on %s not sent: %s", self.channel, e)

    def _execute(self, conn: Any) -> None:
        channel = self.channel.encode(self._statement.encoding(conn))
        self._statement.execute(conn, [channel], _TEXT_1)


_TEXT_1 = [0]


def _flush_at_exit(ref: weakref.ref[Wakeups]) -> None:
    wakeups = ref()
    if wakeups is not None:
        wakeups.flush()


def _run(ref: weakref.ref[Wakeups]) -> None:
    while True:
        wakeups = ref()
        if wakeups is None:
            return
        poked = wakeups._poked
        del wakeups
        if not poked.wait(timeout=10.0):
            continue
        poked.clear()
        wakeups = ref()
        if wakeups is None:
            return
        if wakeups._pending:
            wakeups._pending = False
            wakeups._send()
        del wakeups
        time.sleep(WAKE_INTERVAL)
