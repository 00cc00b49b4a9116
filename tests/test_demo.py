"""``ledger demo`` runs in the suite: the real workflows, dev server and dispatcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LEDGER = str(Path(sys.executable).parent / "ledger")


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    result = subprocess.run(
        [LEDGER, "demo"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert "dispatcher outcomes: delivered 2" in output
    assert "phase EXECUTION_COMPLETED" in output
    assert "type=AccountCreationFailed" in output
    assert output.count("delivered") >= 3  # the outcomes line and two audit rows
    folder = output.split("ledger: sqlite:///", 1)[1].split()[0]
    assert not Path(folder).parent.exists(), "the demo left its temporary folder behind"
