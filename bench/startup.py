"""CLI start-up: the wall time of ``ledger show ID``, ``ledger list`` and
``ledger --help`` beside a bare ``python -c pass`` (the interpreter's own start, the
baseline) measured in the same run, interleaved, median of N runs each.

    .venv/bin/python bench/startup.py [--runs 15]

Also prints the ten slowest imports of ``ledger show`` (``python -X importtime``).

The project's modules are compiled to bytecode first, as an installed package has
them: under ``PYTHONDONTWRITEBYTECODE`` an editable checkout without ``__pycache__``
would otherwise compile them from source in every run, and the figures would
measure that.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEDGER = str(Path(sys.executable).parent / "ledger")
ROOT = Path(__file__).resolve().parent.parent


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for package in ("ledger", "projections"):
        compileall.compile_dir(ROOT / package, quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "LEDGER_URL": f"sqlite:///{folder}/ledger.db"}
        created = subprocess.run(
            [LEDGER, "create", "-", "--json"],
            input=b'{"kind": "AgentExecution", "spec": {"agent_id": "a", "message": "m"}}',
            check=True,
            capture_output=True,
            env=env,
        )
        execution_id = created.stdout.decode().split('"id": "')[1].split('"')[0]
        subprocess.run([LEDGER, "list"], check=True, capture_output=True, env=env)  # Views.
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "ledger show ID": [LEDGER, "show", execution_id],
            "ledger list": [LEDGER, "list"],
            "ledger --help": [LEDGER, "--help"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(_timed(argv, env))
        load = os.getloadavg()[0]
        print(f"start-up, median of {args.runs} runs (load average {load:.1f}):")
        baseline = statistics.median(times["python -c pass (baseline)"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:28} {median * 1000:7.0f} ms  ({median / baseline:4.1f}x baseline)")
        traced = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ledger", "show", execution_id],
            check=True,
            capture_output=True,
            env=env,
            text=True,
        )
    rows = []
    for line in traced.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    print("slowest imports of `ledger show` (cumulative, µs):")
    for cumulative, name in sorted(rows, reverse=True)[:10]:
        print(f"  {cumulative:8d} {name}")


if __name__ == "__main__":
    main()
