"""One poll loop for every test and benchmark: :func:`wait_for`.

The deadlines are generous on purpose: the suite must pass on a loaded machine
(other test runs and CPU hogs beside it), so a wait fails only when the condition
is really not coming, and then with a message saying what was awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 60.0
"""Seconds before :func:`wait_for` gives up, unless told otherwise."""
DEFAULT_INTERVAL = 0.05


def wait_for(
    condition: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str | Callable[[], str] = "a condition",
) -> None:
    """Polls ``condition()`` until it is true; fails (AssertionError) after ``timeout``.

    ``message`` says what was awaited (a callable is evaluated only on failure, so
    it may read logs or the store). From async code, run it in a thread:
    ``await asyncio.to_thread(wait_for, condition, ...)`` (the condition runs
    there too, and the event loop keeps going).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
