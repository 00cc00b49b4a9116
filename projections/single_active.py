"""One active follower per store: replicas stand by and take over on failure.

:class:`SingleActive` is held for the whole run of a follower (the dispatcher).
On PostgreSQL it is a session-level advisory lock on a connection of its own,
keyed by the schema and the follower's name: when the holder dies, its
connection closes, the lock is released, and a standby acquires it. On SQLite
it is an exclusive ``flock`` on a lock file beside the follower's database
file, released by the kernel when the holder dies. In memory it is a no-op.

A standby polls for the lock and says once that it is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from ledger.config import StoreConfig, connect

logger = logging.getLogger(__name__)


class SingleActive:
    """An exclusive, crash-released lock for one follower of one store."""

    def __init__(self, config: StoreConfig, name: str, *, poll_interval: float = 1.0) -> None:
        self.config = config
        self.name = name
        self.poll_interval = poll_interval
        self._connection: Any = None
        self._fd: int | None = None

    async def acquire(self) -> None:
        """Waits until this process is the active one."""
        said = False
        while not await asyncio.to_thread(self._try_acquire):
            if not said:
                logger.warning("another %s is active on this store; standing by", self.name)
                said = True
            await asyncio.sleep(self.poll_interval)
        if said:
            logger.warning("%s is now active", self.name)

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
                self._connection = connect(self.config)
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
