"""One active follower per store: replicas stand by and take over on failure.

:class:`SingleActive` is held for the whole run of a follower (the dispatcher).
On PostgreSQL it is a session-level advisory lock on a connection of its own,
keyed by the schema and the follower's name: when the holder dies, its
connection closes, the lock is released, and a standby acquires it. On SQLite
it is an exclusive ``flock`` on a lock file beside the follower's database
file, released by the kernel when the holder dies. In memory it is a no-op.

A standby polls for the lock and says once that it is waiting.

The holder can lose the lock without dying: on PostgreSQL the lock lives as long
as its connection, and a server restart or a terminated backend ends that
connection while the process goes on. :meth:`SingleActive.held` tells: the
connection answers a query within :data:`CHECK_TIMEOUT` seconds (TCP keepalives
on that connection detect a silent peer too), else the lock is considered lost,
the connection is closed, and the holder must stop and stand by again (the
dispatcher does, see :meth:`projections.dispatcher.Dispatcher.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import psycopg

from ledger.config import StoreConfig, connect
from ledger.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 5.0
"""Seconds the lock's connection has to answer :meth:`SingleActive.held`."""

_LOCK_CONNECTION_OPTIONS: dict[str, Any] = {
    "application_name": "ledger-single-active",
    "options": f"-c statement_timeout={int(CHECK_TIMEOUT * 1000)}",
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""The lock's connection: named in ``pg_stat_activity``, kept alive and checked by TCP."""


class SingleActive:
    """An exclusive, crash-released lock for one follower of one store."""

    def __init__(self, config: StoreConfig, name: str, *, poll_interval: float = 1.0) -> None:
        self.config = config
        self.name = name
        self.poll_interval = poll_interval
        self._connection: Any = None
        self._fd: int | None = None

    async def acquire(self) -> None:
        """Waits until this process is the active one (while the store is unreachable
        too: it says so and tries again)."""
        said = False
        while True:
            try:
                if await asyncio.to_thread(self._try_acquire):
                    break
                if not said:
                    logger.warning("another %s is active on this store; standing by", self.name)
                    said = True
            except (StoreUnavailableError, psycopg.Error) as e:
                self.release()
                logger.warning(
                    "cannot take the %s lock (%s); trying again in %.1fs",
                    self.name,
                    e,
                    self.poll_interval,
                )
                said = True
            await asyncio.sleep(self.poll_interval)
        if said:
            logger.warning("%s is now active", self.name)

    def held(self) -> bool:
        """Whether this process still holds the lock (blocking, at most about
        :data:`CHECK_TIMEOUT` seconds). On PostgreSQL: its connection answers; when
        it does not, the connection is closed and the lock is lost."""
        if self._connection is None:
            return self._fd is not None or not self.config.is_postgres
        try:
            self._connection.execute("SELECT 1").fetchone()
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()  # Closing the session releases the lock.
            self._connection = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _try_acquire(self) -> bool:
        if self.config.is_postgres:
            if self._connection is None:
                self._connection = connect(self.config, **_LOCK_CONNECTION_OPTIONS)
            key = f"ledger-{self.name}:{self.config.env['POSTGRES_SCHEMA']}"
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (key,)
            ).fetchone()
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
