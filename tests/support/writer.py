"""The writer processes of the chaos and fault tests (and the commands ``bench/soak.py`` runs).

    python -m tests.support.writer planned --url URL --name NAME --seed N --stop-file F
    python -m tests.support.writer lifecycles --url URL --out F.jsonl --stop-file F

- :func:`run_command`: one command of a :class:`~tests.support.builders.Plan` on
  an execution, with ``expected_version`` (the chaos writer and the soak's).
- ``planned`` (:class:`PlannedWriter`, the chaos test's): every execution carries
  its plan in its labels (``chaos-owner``: the writer that drives it;
  ``chaos-plan``: ``<steps>-<end>``), so the writer needs no state of its own.
  It follows the ledger's log for executions whose owner label is its name
  (those the caller activity records with real task tokens, and its own,
  without token, created with deterministic ids ``aex-<name>-<n>`` /
  ``wex-...``), and drives each through its plan, one command at a time.
  Killed and restarted, it scans the log from the start and carries on where
  the *ledger* says each execution is; a write that reached the store after the
  kill shows up as a version conflict, and the command is decided again from
  the store. When the stop file exists and nothing of its own is left, it exits 0.
- ``lifecycles`` (the fault tests'): appends lifecycles (or completes given
  executions) in a loop and records every command's result as a JSON line
  (:class:`CommandResult`); on :class:`~ledger.contract.errors.StoreUnavailableError`
  it retries the same command, as a client is told to. :func:`check_lifecycle`:
  an execution's history is a whole-command prefix of that lifecycle, with no
  command applied twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ledger.application import HistoryEntry, Ledger, open_ledger
from ledger.contract.errors import StoreUnavailableError, VersionConflictError
from ledger.contract.kinds import AGENT_EXECUTION, WORKFLOW_EXECUTION
from ledger.contract.names import CREATED_TOPICS
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from tests.support.builders import (
    ORIGIN_LABEL,
    OWNER_LABEL,
    PLAN_LABEL,
    Plan,
    agent_execution,
    agent_status,
    finish_patch,
    planned_resource,
    step_patch,
)

CREATED_TOPIC = CREATED_TOPICS[0]
ERROR_TYPE = "ChaosError"


# Planned commands.


def run_command(
    ledger: Ledger,
    kind_name: str,
    owner: str,
    plan: Plan,
    execution_id: str,
    command: str,
    version: int,
) -> int:
    """Runs one command of ``plan`` on an execution at ``version``; returns the new version."""
    if command == "create":
        return ledger.create(planned_resource(kind_name, owner, plan, "own", execution_id)).version
    if command.startswith("step"):
        patch = step_patch(kind_name, int(command.split()[1]))
        return ledger.update_status(execution_id, patch, expected_version=version).version
    if command == "finish":
        patch = finish_patch(kind_name, execution_id)
        return ledger.update_status(execution_id, patch, expected_version=version).version
    if command == "complete":
        output = {"by": owner, "id": execution_id}
        return ledger.complete(execution_id, output, expected_version=version).version
    if command == "fail":
        return ledger.fail(
            execution_id,
            f"chaos failure of {execution_id}",
            error_type=ERROR_TYPE,
            details={"id": execution_id},
            expected_version=version,
        ).version
    if command == "cancel":
        return ledger.cancel(
            execution_id, f"chaos cancel of {execution_id}", expected_version=version
        ).version
    raise AssertionError(f"unknown command {command!r}")


def own_id(kind_name: str, owner: str, n: int) -> str:
    prefix = AGENT_EXECUTION.id_prefix if kind_name == AGENT_EXECUTION.name else "wex"
    return f"{prefix}-{owner}-{n:05d}"


def own_item(seed: int, owner: str, n: int) -> tuple[str, str, Plan]:
    """(kind, id, plan) of the writer's own execution number ``n``: seeded."""
    rng = random.Random(f"{seed}:{owner}:{n}")
    kind_name = rng.choice([AGENT_EXECUTION.name, WORKFLOW_EXECUTION.name])
    return kind_name, own_id(kind_name, owner, n), Plan.draw(rng)


def open_when_available(url: str, on_error: Any = None) -> Ledger:
    """``open_ledger(url)``, retried while the store is unavailable."""
    while True:
        try:
            return open_ledger(url)
        except StoreUnavailableError as e:
            if on_error is not None:
                on_error(e)
            time.sleep(0.2)


# The planned writer.


@dataclass
class _Item:
    kind_name: str
    plan: Plan
    version: int
    own: bool

    @property
    def done(self) -> bool:
        return self.plan.next_command(self.version) is None


class PlannedWriter:
    """Drives the executions owned by ``name`` through their plans (see the module doc)."""

    def __init__(self, ledger: Ledger, name: str, seed: int, active: int) -> None:
        self.ledger = ledger
        self.name = name
        self.seed = seed
        self.active_own = active
        self.items: dict[str, _Item] = {}
        self.position = 0
        self.next_own = 0
        self.commands = 0
        self.rng = random.Random(f"{seed}:{name}:order")

    def scan(self) -> None:
        """Reads the log from the last position: new executions of ours, versions."""
        while True:
            page = self.ledger.recorder.select_notifications(
                start=self.position, limit=1000, inclusive_of_start=False
            )
            for notification in page:
                execution_id = str(notification.originator_id)
                version = int(notification.originator_version)
                if notification.topic == CREATED_TOPIC:
                    event = cast(
                        Execution.Created, self.ledger.mapper.to_domain_event(notification)
                    )
                    labels = event.metadata.labels
                    if labels.get(OWNER_LABEL) == self.name and execution_id not in self.items:
                        own = labels.get(ORIGIN_LABEL) == "own"
                        self.items[execution_id] = _Item(
                            event.kind, Plan.parse(labels[PLAN_LABEL]), version, own
                        )
                        if own:
                            n = int(execution_id.rsplit("-", 1)[1])
                            self.next_own = max(self.next_own, n + 1)
                item = self.items.get(execution_id)
                if item is not None:
                    item.version = max(item.version, version)
            if page:
                self.position = page[-1].id
            if len(page) < 1000:
                break
        for execution_id in [i for i, item in self.items.items() if item.done]:
            del self.items[execution_id]

    def own_running(self) -> int:
        return sum(1 for item in self.items.values() if item.own)

    def step(self, creating: bool) -> bool:
        """Runs one command (or creates an execution of its own); False when idle."""
        if creating and self.own_running() < self.active_own:
            kind_name, execution_id, plan = own_item(self.seed, self.name, self.next_own)
            self.items[execution_id] = _Item(kind_name, plan, 0, own=True)
            self.next_own += 1
        if not self.items:
            return False
        execution_id = self.rng.choice(sorted(self.items))
        item = self.items[execution_id]
        command = item.plan.next_command(item.version)
        assert command is not None
        try:
            item.version = run_command(
                self.ledger,
                item.kind_name,
                self.name,
                item.plan,
                execution_id,
                command,
                item.version,
            )
        except VersionConflictError:
            # A write of an earlier life reached the store after all: decide again from it.
            item.version = self.ledger.read(execution_id).version
        self.commands += 1
        if item.done:
            del self.items[execution_id]
        return True


def planned_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.writer planned")
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--active", type=int, default=4, help="own executions in flight")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between commands")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    started = time.monotonic()
    ledger = open_when_available(args.url)
    writer = PlannedWriter(ledger, args.name, args.seed, args.active)
    last_scan = 0.0
    try:
        while not stopping.is_set():
            stop_seen = args.stop_file.exists()
            if stop_seen or time.monotonic() - last_scan > 0.1:
                writer.scan()
                last_scan = time.monotonic()
            try:
                busy = writer.step(creating=not stop_seen)
            except StoreUnavailableError:
                time.sleep(0.2)
                continue
            if not busy:
                if stop_seen:
                    break
                time.sleep(0.05)
            elif args.pause:
                time.sleep(args.pause)
    finally:
        ledger.close()
    print(
        f"writer {args.name}: {writer.commands} commands in {time.monotonic() - started:.1f}s, "
        f"next own {writer.next_own}",
        flush=True,
    )
    return 0


# The lifecycles writer.


@dataclass(frozen=True)
class CommandResult:
    """One command the lifecycles writer ran, as it recorded it."""

    lifecycle: int
    execution_id: str
    step: str
    at: float
    ok: bool
    error: str = ""
    message: str = ""

    @classmethod
    def parse(cls, line: str) -> CommandResult:
        return cls(**json.loads(line))


def read_results(path: Path) -> list[CommandResult]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # The last line may be half-written while the writer runs.
    results = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            results.append(CommandResult.parse(line))
    return results


STEPS = ("create", "start", "finish")
"""The lifecycle: ``create`` (Created), ``start`` (IN_PROGRESS with a message:
StatusChanged), ``finish`` (COMPLETED by patch with a message: StatusChanged and
Completed, in one command)."""


def _run_step(ledger: Ledger, step: str, n: int, execution_id: str) -> None:
    if step == "create":
        ledger.create(agent_execution(execution_id, agent_id="writer", message=f"lifecycle {n}"))
    elif step == "start":
        ledger.update_status(execution_id, agent_status(Phase.IN_PROGRESS, [f"start {n}"]))
    else:
        ledger.update_status(execution_id, agent_status(Phase.COMPLETED, [f"finish {n}"]))


def lifecycles_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.writer lifecycles")
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stop-file", required=True, type=Path)
    parser.add_argument("--complete", default="", help="file of execution ids to complete")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument(
        "--hold-after",
        type=int,
        default=0,
        help="with --complete: after this many ids, wait for --go-file before the rest",
    )
    parser.add_argument("--go-file", type=Path, default=None)
    args = parser.parse_args(argv)
    ids: list[str] = Path(args.complete).read_text().split() if args.complete else []
    steps = ("start", "finish") if ids else STEPS
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with args.out.open("a", buffering=1) as out:

        def record(n: int, execution_id: str, step: str, error: BaseException | None) -> None:
            line: dict[str, Any] = {
                "lifecycle": n,
                "execution_id": execution_id,
                "step": step,
                "at": time.time(),
                "ok": error is None,
            }
            if error is not None:
                line["error"] = f"{type(error).__module__}.{type(error).__qualname__}"
                line["message"] = str(error)[:500]
            out.write(json.dumps(line) + "\n")

        ledger = open_when_available(args.url, lambda e: record(-1, "", "open", e))
        n = 0
        while not args.stop_file.exists() and not stopping.is_set():
            if ids:
                if n >= len(ids):
                    break
                if args.go_file is not None and n == args.hold_after:
                    # Held mid-list, its connections open, until the test says go.
                    while not args.go_file.exists() and not stopping.is_set():
                        time.sleep(0.05)
                execution_id = ids[n]
            else:
                execution_id = AGENT_EXECUTION.new_id()
            for step in steps:
                while True:
                    try:
                        _run_step(ledger, step, n, execution_id)
                    except StoreUnavailableError as e:
                        record(n, execution_id, step, e)  # Retryable: retry the same command.
                        time.sleep(0.2)
                        continue
                    except Exception as e:
                        record(n, execution_id, step, e)  # Not retryable: next lifecycle.
                        break
                    record(n, execution_id, step, None)
                    break
            n += 1
            if args.pause:
                time.sleep(args.pause)
        ledger.close()
    return 0


def check_lifecycle(history: Sequence[HistoryEntry], n: int) -> int:
    """Checks one lifecycles-writer execution's history; returns its commands (1-3).

    Each command's events are all there or none (``finish`` writes two events),
    none is applied twice, and each carries what its command said.
    """
    types = [h.type for h in history]
    whole = [
        ["Created"],
        ["Created", "StatusChanged"],
        ["Created", "StatusChanged", "StatusChanged", "Completed"],
    ]
    assert types in whole, f"not a whole-command prefix of the lifecycle: {types}"
    commands = whole.index(types) + 1
    created = history[0].event
    assert isinstance(created, Execution.Created)
    assert created.spec.message == f"lifecycle {n}"  # type: ignore[attr-defined]
    if commands >= 2:
        assert history[1].phase is Phase.IN_PROGRESS
        assert _messages(history[1]) == [f"start {n}"]
    if commands == 3:
        assert _messages(history[2]) == [f"finish {n}"]
        assert history[3].phase is Phase.COMPLETED
    return commands


def _messages(entry: HistoryEntry) -> list[str]:
    event = entry.event
    assert isinstance(event, Execution.StatusChanged)
    return [m.content for m in event.patch.messages]  # type: ignore[attr-defined]


def writer_executions(ledger: Ledger) -> dict[str, int]:
    """Every execution id in the ledger, with its number of events."""
    counts: dict[str, int] = {}
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start=start, limit=1000)
        for notification in page:
            key = str(notification.originator_id)
            counts[key] = counts.get(key, 0) + 1
        if len(page) < 1000:
            return counts
        start = page[-1].id + 1


WRITERS = {"planned": planned_main, "lifecycles": lifecycles_main}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in WRITERS:
        raise SystemExit(WRITERS[sys.argv[1]](sys.argv[2:]))
    raise SystemExit(f"usage: python -m tests.support.writer {{{','.join(WRITERS)}}} ...")
