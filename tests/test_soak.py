"""The short soak: ``bench/soak.py --seconds 15 --writers 2`` must end with nothing lost.

It starts its own Temporal dev server and a fresh PostgreSQL schema (dropped at
the end), runs two writer processes, the views and the dispatcher, and checks
the exact counts itself (see ``bench/soak.py``); here only its verdict is read.

Also here: what the soak's lag samples showed, a negative lag (``Views.lag``
read the heads before the positions, so a view that moved in between was
"ahead" of its log).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.application import open_ledger
from ledger.store.url import parse_url
from projections.views import Views
from tests.support.builders import agent_execution

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.temporal
def test_short_soak_loses_nothing(postgres_server: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--seconds",
            "15",
            "--writers",
            "2",
            "--url",
            postgres_server,
            "--work-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    checks = [line for line in result.stdout.splitlines() if line.startswith("CHECK")]
    assert len(checks) == 1, output[-6000:]
    assert checks[0].startswith("CHECK OK: nothing lost"), checks[0]
    assert checks[0].endswith("lost 0"), checks[0]
    assert "soak summary" in result.stdout
    lost = [line for line in result.stdout.splitlines() if line.strip().startswith("lost ")]
    assert [line.split() for line in lost] == [["lost", "0"]], result.stdout[-3000:]
    # Throughput and lag were printed over time.
    assert sum("commands/s" in line for line in result.stdout.splitlines()) >= 3


def test_lag_is_never_negative_while_followers_move(pg_url: str) -> None:
    with contextlib.closing(open_ledger(pg_url)) as ledger:

        def append() -> None:
            record = ledger.create(agent_execution(agent_id="a", message="m"))
            ledger.complete(record.id)

        append()
        with contextlib.closing(Views(parse_url(pg_url))) as views:
            views.catch_up()
            positions = views.status.recorder.positions

            def moved_meanwhile() -> dict[str, int]:
                # While lag() runs, new events arrive and the views follow them.
                views.status.recorder.positions = positions  # type: ignore[method-assign]
                append()
                views.catch_up()
                return positions()

            views.status.recorder.positions = moved_meanwhile  # type: ignore[method-assign]
            lags = views.lag()
    assert all(lag.lag >= 0 for lag in lags), lags
    assert [lag.lag for lag in lags[:3]] == [0, 0, 0], lags  # The views; no dispatcher ran.
