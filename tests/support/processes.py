"""Child processes of the tests and benchmarks: started, stopped, killed, with their logs.

- :func:`python_process`: ``python <args>`` in the repository root, output appended
  to a log file, ``LEDGER_CIPHER_KEY`` removed from the environment (each run
  sets its own, or none).
- :func:`start_dispatcher` (``python -m ledger dispatcher run``),
  :func:`start_planned_writer` / :func:`start_lifecycles_writer` (the writers of
  :mod:`tests.support.writer`), :data:`LEDGER` (the CLI, for
  ``ledger projections run``).
- :func:`stop_process`: SIGTERM, then SIGKILL after a timeout. :func:`check_alive`:
  fails with the log's tail when a process exited by itself.
- :class:`Killable`: a process started, SIGKILLed and started again (the chaos test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository root (the child processes' working directory)."""
LEDGER = str(Path(sys.executable).parent / "ledger")
"""The ``ledger`` CLI of this environment."""


def python_process(
    args: Sequence[str], env: dict[str, str], log_file: Path
) -> subprocess.Popen[bytes]:
    """``python <args>`` in the project root, output appended to ``log_file``."""
    full_env = dict(os.environ)
    full_env.pop("LEDGER_CIPHER_KEY", None)
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def start_dispatcher(url: str, temporal: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m ledger dispatcher run`` on ``url`` and the Temporal at ``temporal``."""
    return python_process(
        ["-m", "ledger", "dispatcher", "run"],
        {"LEDGER_URL": url, "TEMPORAL_ADDRESS": temporal, **env},
        log,
    )


def planned_writer_args(url: str, name: str, seed: int, stop_file: Path, pause: float) -> list[str]:
    """The arguments of the planned writer (``python -m tests.support.writer planned``)."""
    return [
        "-m",
        "tests.support.writer",
        "planned",
        "--url",
        url,
        "--name",
        name,
        "--seed",
        str(seed),
        "--stop-file",
        str(stop_file),
        "--pause",
        str(pause),
    ]


def start_lifecycles_writer(
    url: str, name: str, tmp: Path, *args: str, **env: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The lifecycles writer (``python -m tests.support.writer lifecycles``), its
    backends named ``name``; returns it, its results file, its stop file."""
    out, stop = tmp / f"{name}.jsonl", tmp / f"{name}.stop"
    process = python_process(
        [
            "-m",
            "tests.support.writer",
            "lifecycles",
            "--url",
            url,
            "--out",
            str(out),
            "--stop-file",
            str(stop),
            *args,
        ],
        {"PGAPPNAME": name, **env},
        tmp / f"{name}.log",
    )
    return process, out, stop


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``; returns its code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def kill_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGKILL whatever of ``processes`` still runs (a test's clean-up)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def check_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    assert process.poll() is None, (
        f"process exited ({process.returncode}):\n{log.read_text(errors='replace')[-4000:]}"
    )


@dataclass
class Killable:
    """A process of a run: started, SIGKILLed and started again."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    context: Callable[[str], str] = str
    """Wraps every assertion message (the chaos test adds its seed)."""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        with self.log.open("a") as f:
            f.write(f"\n===== start {self.starts} =====\n")
        self.process = python_process(self.args, self.env, self.log)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def check_alive(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, self.context(
            f"{self.name} exited by itself ({self.process.returncode}):\n{self.tail()}"
        )

    def kill(self) -> None:
        self.check_alive()
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.exits.append(self.process.wait(10))
        assert self.exits[-1] == -signal.SIGKILL, self.context(f"{self.name}: {self.exits[-1]}")
        self.kills += 1

    def stop(self) -> int:
        assert self.process is not None
        return stop_process(self.process)

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit by itself; returns its code."""
        assert self.process is not None
        return self.process.wait(timeout)
