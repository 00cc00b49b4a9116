"""Leadership: one active follower per store; replicas stand by and take over on failure.

:class:`SingleActive` is the lock, held for the whole run of a follower (the dispatcher).
On PostgreSQL it is a session-level advisory lock on a connection of its own,
keyed by the schema and the follower's name: when the holder dies, its
connection closes, the lock is released, and a standby acquires it. On SQLite
it is an exclusive ``flock`` on a lock file beside the follower's database
file, released by the kernel when the holder dies. In memory it is a no-op.

A standby polls for the lock and says once that it is waiting.

The holder can lose the lock without dying: on PostgreSQL the lock lives as long
as its connection, and a server restart or a terminated backend ends that
connection while the process goes on. :meth:`SingleActive.held` tells: the
connection answers a query within about :data:`CHECK_TIMEOUT` seconds (the
server's ``statement_timeout``, and ``tcp_user_timeout`` for a peer that has gone
silent), else the connection is closed and the lock is considered lost; the
holder must then stop and stand by again (the dispatcher does, see
:meth:`projections.dispatch.dispatcher.Dispatcher.run`).

:class:`Leadership` is how a follower uses the lock: it holds it for a run
(:meth:`Leadership.hold`), and watches that it still holds it
(:meth:`Leadership.watch`), setting :attr:`Leadership.lost` when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg

from ledger.contract.errors import StoreUnavailableError
from ledger.observability.metrics import DISPATCHER_ACTIVE
from ledger.store.connections import connect
from ledger.store.url import StoreConfig

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 5.0
"""Seconds the lock's connection has to answer :meth:`SingleActive.held`."""


def _lock_connection_options() -> dict[str, Any]:
    """The lock's connection: named in ``pg_stat_activity`` (``PGAPPNAME`` wins when
    set), a statement timeout on the server, and TCP timeouts on this side so that a
    silent peer fails a check in seconds rather than after minutes of retransmits."""
    timeout_ms = int(CHECK_TIMEOUT * 1000)
    return {
        "application_name": os.environ.get("PGAPPNAME") or "ledger-single-active",
        "options": f"-c statement_timeout={timeout_ms}",
        "tcp_user_timeout": timeout_ms,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


class SingleActive:
    """An exclusive, crash-released lock for one follower of one store."""

    def __init__(self, config: StoreConfig, name: str, *, poll_interval: float = 1.0) -> None:
        self.config = config
        self.name = name
        self.poll_interval = poll_interval
        self._connection: Any = None
        self._fd: int | None = None
        self._lock = threading.Lock()
        """Guards ``_connection``: a check still running in a worker thread must not
        close a connection opened after it (and with it the lock taken again)."""

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Waits until this process is the active one (while the store is unreachable
        too: it says so once and tries again); returns False, not holding the lock,
        if ``stop`` is set first."""
        said = False
        unreachable = False
        while stop is None or not stop.is_set():
            try:
                if await asyncio.to_thread(self._try_acquire):
                    if said:
                        logger.warning("%s is now active", self.name)
                    return True
                if not said:
                    logger.warning("another %s is active on this store; standing by", self.name)
                    said = True
                unreachable = False
            except (StoreUnavailableError, psycopg.Error) as e:
                self.release()
                if not unreachable:
                    logger.warning(
                        "cannot take the %s lock (%s); trying again every %.1fs",
                        self.name,
                        e,
                        self.poll_interval,
                    )
                said = unreachable = True
            if stop is None:
                await asyncio.sleep(self.poll_interval)
            else:
                # asyncio.timeout, not wait_for, which on Python 3.11 can swallow a
                # cancellation (see Leadership.watch).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await stop.wait()
        return False

    def held(self) -> bool:
        """Whether this process still holds the lock (blocking, at most about
        :data:`CHECK_TIMEOUT` seconds). On PostgreSQL: its connection answers; when
        it does not, that connection is closed and the lock is lost."""
        with self._lock:
            connection = self._connection
        if connection is None:
            return self._fd is not None or not self.config.is_postgres
        try:
            connection.execute("SELECT 1").fetchone()
        except psycopg.Error:
            self._drop(connection)
            return False
        return True

    def release(self) -> None:
        """Releases the lock if held (closing its connection, or unlocking its file)."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()  # Closing the session releases the lock.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _drop(self, connection: Any) -> None:
        """Closes ``connection``, forgetting it only if it is still the lock's."""
        with self._lock:
            if self._connection is connection:
                self._connection = None
        with contextlib.suppress(Exception):
            connection.close()

    def _try_acquire(self) -> bool:
        if self.config.is_postgres:
            with self._lock:
                connection = self._connection
            if connection is None:
                connection = connect(self.config, **_lock_connection_options())
                with self._lock:
                    self._connection = connection
            key = f"ledger-{self.name}:{self.config.env['POSTGRES_SCHEMA']}"
            row = connection.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            return bool(row and row[0])
        if self.config.is_sqlite and self.config.env["SQLITE_DBNAME"] != ":memory:":
            if self._fd is None:
                path = Path(self.config.component_env(self.name)["SQLITE_DBNAME"] + ".lock")
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return True


class Leadership:
    """A follower's hold on its :class:`SingleActive` lock, and the watch on it."""

    def __init__(self, lock: SingleActive, *, check_interval: float = 2.0) -> None:
        self.lock = lock
        self.check_interval = check_interval
        """Seconds between two checks that the lock is still held."""
        self.lost = asyncio.Event()
        """Set when the lock was found lost during a run (the follower clears it when
        it starts a run)."""
        self._holding = False

    @property
    def poll_interval(self) -> float:
        """Seconds between two tries to take the lock."""
        return self.lock.poll_interval

    @contextlib.asynccontextmanager
    async def hold(self, stop: asyncio.Event) -> AsyncIterator[bool]:
        """Holds the lock (waiting for it) unless already held; yields False, not
        holding it, when ``stop`` is set while waiting. Releases what it took."""
        if self._holding:
            yield True
            return
        if not await self.lock.acquire(stop):
            yield False
            return
        self._holding = True
        DISPATCHER_ACTIVE.set(1)
        try:
            yield True
        finally:
            DISPATCHER_ACTIVE.set(0)
            self._holding = False
            self.lock.release()

    async def watch(self, on_lost: Callable[[], None]) -> None:
        """Checks every :attr:`check_interval` seconds that the lock is held; when it
        is not, sets :attr:`lost`, calls ``on_lost`` and returns. Cancel it to stop."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a
                # cancellation that lands as the check returns, and the watch would
                # then run on for ever, holding up the end of the follower's run.
                async with asyncio.timeout(CHECK_TIMEOUT * 2):
                    held = await asyncio.to_thread(self.lock.held)
            except TimeoutError:
                held = False
            if not held:
                DISPATCHER_ACTIVE.set(0)
                self.lost.set()
                on_lost()
                return

    def release(self) -> None:
        """Releases the lock (when the follower closes)."""
        self.lock.release()


_HOLDER_SQL = """SELECT l.pid, s.application_name, s.client_addr, s.backend_start
FROM pg_locks l LEFT JOIN pg_stat_activity s ON s.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
AND l.classid::bigint = ((hashtext(%(key)s)::bigint >> 32) & 4294967295)
AND l.objid::bigint = (hashtext(%(key)s)::bigint & 4294967295)"""
"""The session holding the advisory lock of ``key`` (the two halves of its bigint)."""


def active_holder(config: StoreConfig, name: str) -> str | None:
    """Who holds the :class:`SingleActive` lock of ``name`` on this store, said for an
    operator (None: nobody, so no such follower is active). It never takes the lock
    for more than a moment: on PostgreSQL it reads ``pg_locks``; on SQLite it tries a
    shared ``flock`` on the lock file and lets it go at once."""
    if config.is_postgres:
        key = f"ledger-{name}:{config.env['POSTGRES_SCHEMA']}"
        with connect(config) as connection:
            row = connection.execute(_HOLDER_SQL, {"key": key}).fetchone()
        if row is None:
            return None
        pid, application, address, since = row
        where = f" from {address}" if address else ""
        started = f", connected since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""
        return f"server process {pid} ({application or 'unnamed'}){where}{started}"
    if not config.is_sqlite or config.env["SQLITE_DBNAME"] == ":memory:":
        return None
    path = Path(config.component_env(name)["SQLITE_DBNAME"] + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"a process on this host (it holds {path.name})"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
