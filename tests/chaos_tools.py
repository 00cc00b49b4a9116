"""Tools for the chaos test (``tests/test_chaos.py``): plans, a resumable writer, a workflow.

Every execution of a chaos run carries its own **plan** in its labels
(``chaos-owner``: the writer that drives it; ``chaos-plan``: ``<steps>-<end>``),
so a writer needs no state of its own: whatever it knew before a SIGKILL, it
reads again from the ledger's log.

- :class:`Plan`: the commands of one lifecycle (``create``, ``steps`` status
  patches, then ``complete`` / ``finish`` (a COMPLETED status patch) / ``fail`` /
  ``cancel``, or ``none``: left running), the events they append, and, from an
  execution's version, the next command.
- The writer (``python -m tests.chaos_tools writer ...``): follows the ledger's
  log for executions whose owner label is its name (those the caller activity
  records with real task tokens, and its own, without token, which it creates
  with deterministic ids ``aex-<name>-<n>`` / ``wex-...``), and drives each one through its
  plan, one command at a time, every write with ``expected_version``. Killed and
  restarted, it scans the log from the start and carries on where the *ledger*
  says each execution is; a write that reached the store after the kill shows
  up as a version conflict, and the command is decided again from the store.
  When the stop file exists and nothing of its own is left, it exits 0.
- :class:`ChaosCallers`: a workflow awaiting many executions at once (both
  kinds, each through the caller activity with its own task token) and
  returning, for each, what Temporal handed it (:func:`describe_final`,
  :func:`describe_failure`), to be compared with :func:`expected_result`.
  Run it with ``UnsandboxedWorkflowRunner`` (this module imports psycopg and
  friends, which the sandbox would re-import).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.api.commons.v1.metadata_pb2 import ApiResourceMetadata
from ledger.api.workflowexecution.v1.status_pb2 import WorkflowTask
from ledger.application import Ledger, open_ledger
from ledger.contract.errors import StoreUnavailableError, VersionConflictError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    Resource,
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
)
from ledger.contract.names import COMPLETED_TOPICS, CREATED_TOPICS
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.temporal.workflow import execute_agent_execution, execute_workflow_execution

OWNER_LABEL = "chaos-owner"
PLAN_LABEL = "chaos-plan"
ORIGIN_LABEL = "chaos-origin"
"""``token`` (recorded by the caller activity) or ``own`` (created by the writer)."""

ENDS = ("complete", "finish", "fail", "cancel", "none")
CREATED_TOPIC = CREATED_TOPICS[0]
COMPLETED_TOPIC = COMPLETED_TOPICS[0]
ERROR_TYPE = "ChaosError"
CANCELLED_TYPE = "ExecutionCancelled"
CALL_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Plan:
    """One lifecycle: ``create``, ``steps`` status patches, then its end."""

    steps: int
    end: str

    def __post_init__(self) -> None:
        assert 0 <= self.steps <= 9 and self.end in ENDS, self

    @property
    def label(self) -> str:
        return f"{self.steps}-{self.end}"

    @classmethod
    def parse(cls, label: str) -> Plan:
        steps, _, end = label.partition("-")
        return cls(int(steps), end)

    @classmethod
    def draw(cls, rng: random.Random, *, ends: Sequence[str] = ENDS) -> Plan:
        return cls(rng.randint(0, 3), rng.choice(list(ends)))

    @property
    def commands(self) -> list[str]:
        ending = [] if self.end == "none" else [self.end]
        return ["create", *(f"step {j}" for j in range(self.steps)), *ending]

    @staticmethod
    def events_of(command: str) -> list[str]:
        if command == "create":
            return ["Created"]
        if command.startswith("step"):
            return ["StatusChanged"]
        if command == "finish":
            return ["StatusChanged", "Completed"]
        return ["Completed"]

    @property
    def events(self) -> list[str]:
        """The event types the whole plan appends, in order."""
        return [e for command in self.commands for e in self.events_of(command)]

    def next_command(self, version: int) -> str | None:
        """The command to run on an execution at ``version`` (0: not created), or None."""
        done = 0
        for command in self.commands:
            if version == done:
                return command
            done += len(self.events_of(command))
            if version < done:
                raise AssertionError(f"version {version} is inside command {command!r} of {self}")
        if version != done:
            raise AssertionError(f"version {version} is past the end of {self}")
        return None

    @property
    def final_phase(self) -> Phase:
        return {
            "complete": Phase.COMPLETED,
            "finish": Phase.COMPLETED,
            "fail": Phase.FAILED,
            "cancel": Phase.CANCELLED,
        }.get(self.end, Phase.IN_PROGRESS if self.steps else Phase.PENDING)


# Resources and commands.


def resource(
    kind_name: str, owner: str, plan: Plan, origin: str, execution_id: str = ""
) -> Resource:
    """The resource of one planned execution (no token: the caller activity adds it)."""
    metadata = ApiResourceMetadata(
        id=execution_id,
        org="chaos",
        labels={OWNER_LABEL: owner, PLAN_LABEL: plan.label, ORIGIN_LABEL: origin},
    )
    if kind_name == AGENT_EXECUTION.name:
        return AgentExecution(
            metadata=metadata,
            spec=AgentExecutionSpec(agent_id=owner, message=f"plan {plan.label}"),
        )
    return WorkflowExecution(
        metadata=metadata,
        spec=WorkflowExecutionSpec(workflow_id=owner, trigger_message=f"plan {plan.label}"),
    )


def step_patch(kind_name: str, j: int) -> AgentExecutionStatus | WorkflowExecutionStatus:
    """Status patch number ``j``: the first one starts the execution."""
    phase = Phase.IN_PROGRESS if j == 0 else Phase.UNSPECIFIED
    if kind_name == AGENT_EXECUTION.name:
        return AgentExecutionStatus(
            phase=int(phase),  # type: ignore[arg-type]
            messages=[AgentMessage(type=MESSAGE_AI, content=f"step {j}")],
        )
    return WorkflowExecutionStatus(
        phase=int(phase),  # type: ignore[arg-type]
        tasks=[WorkflowTask(task_id=f"task-{j}", task_name=f"step {j}")],
    )


def finish_patch(
    kind_name: str, execution_id: str
) -> AgentExecutionStatus | WorkflowExecutionStatus:
    """A COMPLETED status patch carrying one last observation."""
    if kind_name == AGENT_EXECUTION.name:
        return AgentExecutionStatus(
            phase=int(Phase.COMPLETED),  # type: ignore[arg-type]
            messages=[AgentMessage(type=MESSAGE_AI, content="finish")],
        )
    output = Struct()
    output.update({"finished": execution_id})
    return WorkflowExecutionStatus(
        phase=int(Phase.COMPLETED),  # type: ignore[arg-type]
        tasks=[WorkflowTask(task_id="task-finish", task_name="finish")],
        output=output,
    )


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
        return ledger.create(resource(kind_name, owner, plan, "own", execution_id)).version
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


# What the caller receives.


def describe_final(final: Resource) -> dict[str, Any]:
    """What a caller sees of a final resource (compared with :func:`expected_result`)."""
    status: Any = final.status
    described: dict[str, Any] = {
        "id": final.metadata.id,
        "phase": Phase(status.phase).name,
        "token": bool(final.spec.callback_token),
    }
    if isinstance(final, AgentExecution):
        described["messages"] = [m.content for m in final.status.messages]
    else:
        described["tasks"] = [t.task_id for t in final.status.tasks]
        described["output"] = MessageToDict(final.status.output)
    return described


def describe_failure(error: ActivityError) -> dict[str, Any]:
    cause = error.cause
    if not isinstance(cause, ApplicationError):
        return {"error": type(cause).__name__, "message": str(cause)}
    described: dict[str, Any] = {"error": cause.type, "message": cause.message}
    if cause.details and isinstance(cause.details[0], AgentExecution | WorkflowExecution):
        described["final"] = describe_final(cause.details[0])
    return described


def expected_result(kind_name: str, owner: str, plan: Plan, execution_id: str) -> dict[str, Any]:
    """What the caller of a token execution must receive once its plan has run."""
    final: dict[str, Any] = {
        "id": execution_id,
        "phase": plan.final_phase.name,
        "token": False,
    }
    if kind_name == AGENT_EXECUTION.name:
        final["messages"] = [f"step {j}" for j in range(plan.steps)]
        if plan.end == "finish":
            final["messages"].append("finish")
    else:
        final["tasks"] = [f"task-{j}" for j in range(plan.steps)]
        final["output"] = {}
        if plan.end == "finish":
            final["tasks"].append("task-finish")
            final["output"] = {"finished": execution_id}
        elif plan.end == "complete":
            final["output"] = {"by": owner, "id": execution_id}
    if plan.end in ("complete", "finish"):
        return {"completed": final}
    if plan.end == "fail":
        return {"error": ERROR_TYPE, "message": f"chaos failure of {execution_id}", "final": final}
    assert plan.end == "cancel", plan
    return {"error": CANCELLED_TYPE, "message": f"chaos cancel of {execution_id}", "final": final}


# The workflow.


@workflow.defn(name="ChaosCallers")
class ChaosCallers:
    """Awaits one execution per call (``[kind, owner, plan]``), all at once; returns,
    per call in order, ``{"completed": final}`` or the failure it received."""

    @workflow.run
    async def run(self, calls: list[list[str]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._one(*call) for call in calls)))

    async def _one(self, kind_name: str, owner: str, plan_label: str) -> dict[str, Any]:
        plan = Plan.parse(plan_label)
        request = resource(kind_name, owner, plan, "token")
        try:
            if isinstance(request, AgentExecution):
                final: Resource = await execute_agent_execution(
                    request, start_to_close_timeout=CALL_TIMEOUT
                )
            else:
                final = await execute_workflow_execution(
                    request, start_to_close_timeout=CALL_TIMEOUT
                )
        except ActivityError as e:
            return describe_failure(e)
        return {"completed": describe_final(final)}


# The writer.


@dataclass
class _Item:
    kind_name: str
    plan: Plan
    version: int
    own: bool

    @property
    def done(self) -> bool:
        return self.plan.next_command(self.version) is None


class Writer:
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


def writer_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos_tools writer")
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
    while True:
        try:
            ledger = open_ledger(args.url)
            break
        except StoreUnavailableError:
            time.sleep(0.2)
    writer = Writer(ledger, args.name, args.seed, args.active)
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        raise SystemExit(writer_main(sys.argv[2:]))
    raise SystemExit(f"usage: python -m tests.chaos_tools writer ... (not {sys.argv[1:2]})")
