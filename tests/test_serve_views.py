"""``ledger serve``'s status view follower (``ledger/cli/grpc_server/runner.py``), in process:
an unexpected error stops it for a moment, never for good (``list`` would lag
silently ever after)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from ledger.cli.grpc_server.runner import LedgerServer
from tests.support.waiting import wait_for


class _FailingOnce:
    """Views whose first run fails with a bug-like error; the next runs until stopped."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, stop: threading.Event, names: Sequence[str] = ()) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("a bug in a view")
        stop.wait()


def test_the_status_follower_starts_again_after_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    views = _FailingOnce()
    fake: Any = views
    stop = LedgerServer._run_views(fake)
    try:
        wait_for(lambda: views.runs >= 2, message="the follower to start again")
    finally:
        stop()
    assert views.runs == 2
    assert "the status view's follower stopped" in caplog.text
