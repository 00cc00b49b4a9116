"""Resources, specs and status patches for the tests and the benchmarks, built once.

- :func:`agent_execution` / :func:`workflow_execution` (and :func:`execution`, by
  kind name): a resource with a spec; every field optional, nothing set that is
  not asked for (metadata stays unset unless an id, name, org or labels is given;
  ``envelope=True`` adds ``api_version`` and ``kind``).
- :func:`secret_env`: a ``runtime_env`` of plain and secret values.
- :func:`agent_status` / :func:`workflow_status` (and :func:`status`, by kind
  name): status patches.
- :class:`Plan` and its builders (:func:`planned_resource`, :func:`step_patch`,
  :func:`finish_patch`): one planned lifecycle, as the writers of
  :mod:`tests.support.writer` and ``bench/soak.py`` drive it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.struct_pb2 import Struct

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.api.commons.v1.execution_value_pb2 import ExecutionValue
from ledger.api.workflowexecution.v1.status_pb2 import WorkflowTask
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    API_VERSION,
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    Resource,
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
)
from ledger.contract.phases import Phase

Status = AgentExecutionStatus | WorkflowExecutionStatus


# Resources.


def _metadata(
    value: Any, execution_id: str, name: str, org: str, labels: Mapping[str, str] | None
) -> None:
    if execution_id:
        value.metadata.id = execution_id
    if name:
        value.metadata.name = name
    if org:
        value.metadata.org = org
    if labels:
        value.metadata.labels.update(labels)


def agent_execution(
    execution_id: str = "",
    *,
    agent_id: str = "agent-1",
    message: str = "summarise",
    session_id: str = "",
    token: bytes = b"",
    env: Mapping[str, ExecutionValue] | None = None,
    name: str = "",
    org: str = "",
    labels: Mapping[str, str] | None = None,
    envelope: bool = False,
) -> AgentExecution:
    """An AgentExecution (``envelope``: with ``api_version`` and ``kind`` set)."""
    value = AgentExecution(
        spec=AgentExecutionSpec(
            agent_id=agent_id,
            session_id=session_id,
            message=message,
            callback_token=token,
            runtime_env=dict(env or {}),
        )
    )
    if envelope:
        value.api_version = API_VERSION
        value.kind = "AgentExecution"
    _metadata(value, execution_id, name, org, labels)
    return value


def workflow_execution(
    execution_id: str = "",
    *,
    workflow_id: str = "wf-1",
    workflow_instance_id: str = "",
    trigger_message: str = "",
    trigger_metadata: Mapping[str, str] | None = None,
    token: bytes = b"",
    env: Mapping[str, ExecutionValue] | None = None,
    name: str = "",
    org: str = "",
    labels: Mapping[str, str] | None = None,
    envelope: bool = False,
) -> WorkflowExecution:
    """A WorkflowExecution (``envelope``: with ``api_version`` and ``kind`` set)."""
    value = WorkflowExecution(
        spec=WorkflowExecutionSpec(
            workflow_id=workflow_id,
            workflow_instance_id=workflow_instance_id,
            trigger_message=trigger_message,
            trigger_metadata=dict(trigger_metadata or {}),
            callback_token=token,
            runtime_env=dict(env or {}),
        )
    )
    if envelope:
        value.api_version = API_VERSION
        value.kind = "WorkflowExecution"
    _metadata(value, execution_id, name, org, labels)
    return value


def execution(kind_name: str, execution_id: str = "", **fields: Any) -> Resource:
    """:func:`agent_execution` or :func:`workflow_execution`, by kind name."""
    if kind_name == AGENT_EXECUTION.name:
        return agent_execution(execution_id, **fields)
    return workflow_execution(execution_id, **fields)


def secret_env(
    secrets: Mapping[str, str], plain: Mapping[str, str] | None = None
) -> dict[str, ExecutionValue]:
    """A ``runtime_env``: ``secrets`` marked secret, then ``plain`` values."""
    env = {key: ExecutionValue(value=value, is_secret=True) for key, value in secrets.items()}
    env.update({key: ExecutionValue(value=value) for key, value in (plain or {}).items()})
    return env


# Status patches.


def agent_status(
    phase: Phase = Phase.UNSPECIFIED, messages: Sequence[str] = (), message_type: int = MESSAGE_AI
) -> AgentExecutionStatus:
    """An AgentExecution status patch: ``phase`` and messages with these contents
    (of ``message_type``: AI by default, 0 for unspecified)."""
    return AgentExecutionStatus(
        phase=int(phase),  # type: ignore[arg-type]
        messages=[
            AgentMessage(type=message_type, content=content)  # type: ignore[arg-type]
            for content in messages
        ],
    )


def workflow_status(
    phase: Phase = Phase.UNSPECIFIED,
    tasks: Sequence[tuple[str, str]] = (),
    output: Mapping[str, Any] | None = None,
    temporal_workflow_id: str = "",
) -> WorkflowExecutionStatus:
    """A WorkflowExecution status patch: ``phase``, tasks ``(task_id, task_name)``,
    and an ``output`` (set only when given)."""
    value = WorkflowExecutionStatus(
        phase=int(phase),  # type: ignore[arg-type]
        tasks=[WorkflowTask(task_id=task_id, task_name=task_name) for task_id, task_name in tasks],
        temporal_workflow_id=temporal_workflow_id,
    )
    if output is not None:
        value.output.CopyFrom(struct(output))
    return value


def status(kind_name: str, phase: Phase = Phase.UNSPECIFIED) -> Status:
    """An empty status patch of ``kind_name`` with only ``phase`` set."""
    if kind_name == AGENT_EXECUTION.name:
        return agent_status(phase)
    return workflow_status(phase)


def struct(value: Mapping[str, Any]) -> Struct:
    result = Struct()
    result.update(dict(value))
    return result


# A planned lifecycle.

ENDS = ("complete", "finish", "fail", "cancel", "none")
"""How a plan ends: ``complete``, ``finish`` (a COMPLETED status patch), ``fail``,
``cancel``, or ``none`` (left running)."""
TERMINAL_ENDS = ENDS[:-1]
OWNER_LABEL = "chaos-owner"
PLAN_LABEL = "chaos-plan"
ORIGIN_LABEL = "chaos-origin"
"""``token`` (recorded by the caller activity) or ``own`` (created by the writer)."""


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
    def draw(cls, rng: random.Random, *, ends: Sequence[str] = ENDS, running: float = 0.0) -> Plan:
        """0 to 3 steps and one of ``ends``; with ``running``, that share is left running."""
        steps = rng.randint(0, 3)
        if running and rng.random() < running:
            return cls(steps, "none")
        return cls(steps, rng.choice(list(ends)))

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

    @property
    def terminal(self) -> bool:
        return self.end != "none"

    def observations(self) -> int:
        """Status messages (AgentExecution) or tasks (WorkflowExecution) at the end."""
        return self.steps + (self.end == "finish")

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


def planned_resource(
    kind_name: str,
    owner: str,
    plan: Plan,
    origin: str,
    execution_id: str = "",
    *,
    org: str = "chaos",
) -> Resource:
    """The resource of one planned execution (no token: the caller activity adds it)."""
    labels = {OWNER_LABEL: owner, PLAN_LABEL: plan.label, ORIGIN_LABEL: origin}
    if kind_name == AGENT_EXECUTION.name:
        return agent_execution(
            execution_id, agent_id=owner, message=f"plan {plan.label}", org=org, labels=labels
        )
    return workflow_execution(
        execution_id,
        workflow_id=owner,
        trigger_message=f"plan {plan.label}",
        org=org,
        labels=labels,
    )


def step_patch(kind_name: str, j: int) -> Status:
    """Status patch number ``j`` of a plan: the first one starts the execution."""
    phase = Phase.IN_PROGRESS if j == 0 else Phase.UNSPECIFIED
    if kind_name == AGENT_EXECUTION.name:
        return agent_status(phase, [f"step {j}"])
    return workflow_status(phase, [(f"task-{j}", f"step {j}")])


def finish_patch(kind_name: str, execution_id: str) -> Status:
    """A plan's COMPLETED status patch carrying one last observation."""
    if kind_name == AGENT_EXECUTION.name:
        return agent_status(Phase.COMPLETED, ["finish"])
    return workflow_status(
        Phase.COMPLETED, [("task-finish", "finish")], output={"finished": execution_id}
    )
