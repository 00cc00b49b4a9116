"""Store outages: the dispatcher's blocking steps, retried while the store is away.

A step that fails with one of :data:`STORE_ERRORS` is tried again after a delay
from :data:`STORE_BACKOFF`, until it works, the dispatcher is asked to stop (the
error is raised), or the single-active lock is lost meanwhile
(:class:`LockLostError`: the dispatcher stands by instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.contract.errors import StoreUnavailableError
from ledger.store.backoff import Backoff

logger = logging.getLogger(__name__)

STORE_ERRORS = (OperationalError, InterfaceError, StoreUnavailableError)
"""Errors that mean the store is unreachable for now (the library already retried)."""

STORE_BACKOFF = Backoff(initial=0.5, maximum=10.0)
"""Delays between tries of a step while the store is unavailable."""

T = TypeVar("T")


class LockLostError(Exception):
    """The single-active lock was lost while a step waited for the store."""


async def outlast_store(
    step: Callable[..., T],
    *args: Any,
    stop: asyncio.Event,
    lost: asyncio.Event,
    backoff: Backoff = STORE_BACKOFF,
) -> T:
    """Runs the blocking ``step(*args)`` in a worker thread, retrying with ``backoff``
    while the store is unavailable. Raises the store's error once ``stop`` is set,
    and :class:`LockLostError` once ``lost`` is."""
    tries = 0
    while True:
        try:
            return await asyncio.to_thread(step, *args)
        except STORE_ERRORS as e:
            if stop.is_set():
                raise
            if lost.is_set():
                raise LockLostError from e
            tries += 1
            delay = backoff.delay(tries)
            logger.warning("store unavailable (%s); retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
