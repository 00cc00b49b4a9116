"""The Ledger API end to end, on SQLite and PostgreSQL (the ``ledger_app`` fixture).

Every rule is checked for its exact exception type and for having written
nothing: the notification log's last id (every event of every execution) and
the execution's own history are compared before and after.
"""

from __future__ import annotations

import base64
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from eventsourcing.cipher import AESCipher
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from psycopg import sql

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    CallbackTokenTooLargeError,
    CreateConflictError,
    ExecutionNotFoundError,
    InvalidIdError,
    InvalidResourceError,
    Ledger,
    LimitExceededError,
    MissingFieldError,
    Phase,
    PhaseBackwardsError,
    TerminalPhaseError,
    UnknownKindError,
    VersionConflictError,
    WorkflowExecution,
    WorkflowExecutionStatus,
    open_ledger,
)
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.api.agentexecution.v1 import status_pb2 as agent_status
from ledger.api.commons.v1 import audit_pb2
from ledger.api.workflowexecution.v1 import enum_pb2 as workflow_enum
from ledger.api.workflowexecution.v1 import status_pb2 as workflow_status
from ledger.contract.kinds import API_VERSION, MAX_CALLBACK_TOKEN_BYTES, Resource, Status
from ledger.domain.events import TextIdEvent
from ledger.domain.execution import Execution
from ledger.domain.validation import MAX_LABELS, MAX_STRUCT_DEPTH
from tests.support.builders import agent_execution, secret_env, workflow_execution
from tests.support.builders import status as status_for

E = TypeVar("E", bound=BaseException)

TOKEN = b"temporal-task-token:" + bytes(range(256)) + b":end-of-token"
"""A distinctive callback token (every byte value, so no encoding hides it)."""


# Builders.


agent = partial(
    agent_execution,
    name="run",
    message="summarise the report",
    token=TOKEN,
    env=secret_env({}, {"REGION": "eu"}),
    envelope=True,
)
workflow = partial(
    workflow_execution,
    trigger_message="go",
    trigger_metadata={"source": "test"},
    token=TOKEN,
    envelope=True,
)


KIND_BUILDERS: dict[str, Callable[[], Resource]] = {
    "AgentExecution": agent,
    "WorkflowExecution": workflow,
}


def new(kind: str) -> Resource:
    return KIND_BUILDERS[kind]()


def nested(depth: int) -> dict[str, Any]:
    """A JSON object nesting ``depth`` levels deep (``{"k": {"k": ... 1}}``)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def struct(value: dict[str, Any]) -> Struct:
    result = Struct()
    result.update(value)
    return result


def event_count(app: Ledger) -> int:
    """Every event of every execution so far (the notification log's last id)."""
    return app.recorder.max_notification_id() or 0


def history_types(app: Ledger, execution_id: str) -> list[str]:
    return [entry.type for entry in app.history(execution_id)]


@contextmanager
def refused(
    app: Ledger, exc_type: type[E], execution_id: str | None = None
) -> Iterator[pytest.ExceptionInfo[E]]:
    """Expects exactly ``exc_type`` (not a subclass) and no event written."""
    before = event_count(app)
    history_before = len(app.history(execution_id)) if execution_id else 0
    with pytest.raises(exc_type) as info:
        yield info
    assert info.type is exc_type, f"expected exactly {exc_type.__name__}, got {info.type}"
    assert event_count(app) == before, "a refused command wrote an event"
    if execution_id:
        assert len(app.history(execution_id)) == history_before


# Lifecycles.


def test_agent_execution_full_lifecycle(ledger_app: Ledger) -> None:
    app = ledger_app
    created = app.create(agent(), actor="alice")
    execution_id = created.id
    assert re.fullmatch(r"aex-[0-9a-z]{26}", execution_id)
    assert created.version == 1
    assert created.phase is Phase.PENDING
    assert created.resource.spec.callback_token == TOKEN
    assert created.resource.metadata.id == execution_id
    assert created.resource.metadata.name == "run"

    started = app.update_status(
        execution_id,
        AgentExecutionStatus(
            phase=agent_enum.EXECUTION_IN_PROGRESS,
            messages=[agent_status.AgentMessage(type=agent_enum.MESSAGE_HUMAN, content="hi")],
        ),
        actor="runner",
    )
    assert started.version == 2
    assert started.phase is Phase.IN_PROGRESS
    assert started.resource.status.started_at

    progress = app.update_status(
        execution_id,
        AgentExecutionStatus(
            phase=agent_enum.EXECUTION_IN_PROGRESS,
            tool_calls=[
                agent_status.ToolCall(id="c1", name="search", status=agent_enum.TOOL_CALL_RUNNING)
            ],
        ),
    )
    assert progress.version == 3
    done = app.complete(execution_id, {"summary": "ok"}, actor="runner")
    assert done.version == 4
    assert done.phase is Phase.COMPLETED
    assert done.resource.status.completed_at

    resource = app.get(execution_id)
    assert isinstance(resource, AgentExecution)
    assert resource.kind == "AgentExecution"
    assert resource.api_version == API_VERSION
    assert resource.spec.callback_token == TOKEN
    assert [m.content for m in resource.status.messages] == ["hi"]
    assert [c.id for c in resource.status.tool_calls] == ["c1"]
    audit: audit_pb2.ApiResourceAudit = resource.status.audit
    assert audit.spec_audit.created_by.id == "alice"
    assert audit.status_audit.updated_by.id == "runner"
    assert audit.status_audit.event == "completed"

    history = app.history(execution_id)
    assert [h.type for h in history] == ["Created", "StatusChanged", "StatusChanged", "Completed"]
    assert [h.version for h in history] == [1, 2, 3, 4]
    assert [h.phase for h in history] == [
        Phase.PENDING,
        Phase.IN_PROGRESS,
        Phase.IN_PROGRESS,
        Phase.COMPLETED,
    ]
    times = [h.recorded_at for h in history]
    assert times == sorted(times)
    assert app.read(execution_id).version == 4


def test_workflow_execution_full_lifecycle(ledger_app: Ledger) -> None:
    app = ledger_app
    created = app.create(workflow())
    execution_id = created.id
    assert re.fullmatch(r"wex-[0-9a-z]{26}", execution_id)
    assert created.phase is Phase.PENDING

    app.update_status(
        execution_id,
        WorkflowExecutionStatus(
            phase=workflow_enum.EXECUTION_IN_PROGRESS,
            temporal_workflow_id="temporal-wf-1",
            tasks=[
                workflow_status.WorkflowTask(
                    task_id="t1",
                    task_name="fetch",
                    task_type=workflow_enum.WORKFLOW_TASK_API_CALL,
                    status=workflow_enum.WORKFLOW_TASK_IN_PROGRESS,
                )
            ],
        ),
    )
    done = app.complete(execution_id, {"answer": 42, "items": ["a", "b"]})
    assert done.phase is Phase.COMPLETED
    resource = app.get(execution_id)
    assert isinstance(resource, WorkflowExecution)
    assert resource.spec.callback_token == TOKEN
    assert resource.status.temporal_workflow_id == "temporal-wf-1"
    assert MessageToDict(resource.status.output) == {"answer": 42, "items": ["a", "b"]}
    assert [t.task_id for t in resource.status.tasks] == ["t1"]
    assert history_types(app, execution_id) == ["Created", "StatusChanged", "Completed"]


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_pending_may_go_straight_to_a_terminal_phase(ledger_app: Ledger, kind: str) -> None:
    first = ledger_app.create(new(kind)).id
    second = ledger_app.create(new(kind)).id
    third = ledger_app.create(new(kind)).id
    assert ledger_app.complete(first).phase is Phase.COMPLETED
    assert ledger_app.fail(second, "boom").phase is Phase.FAILED
    assert ledger_app.cancel(third, "not needed").phase is Phase.CANCELLED
    for execution_id in (first, second, third):
        assert history_types(ledger_app, execution_id) == ["Created", "Completed"]


def test_explicit_ids_are_used(ledger_app: Ledger) -> None:
    record = ledger_app.create(agent("aex-my_run-1"))
    assert record.id == "aex-my_run-1"
    assert ledger_app.get("aex-my_run-1").metadata.id == "aex-my_run-1"
    longest = "wex-" + "a" * 63
    assert ledger_app.create(workflow(longest)).id == longest


def test_session_id_alone_is_enough_for_an_agent(ledger_app: Ledger) -> None:
    record = ledger_app.create(agent(agent_id="", session_id="session-1"))
    assert isinstance(record.resource, AgentExecution)
    assert record.resource.spec.session_id == "session-1"


def test_workflow_instance_id_alone_is_enough(ledger_app: Ledger) -> None:
    record = ledger_app.create(workflow(workflow_id="", workflow_instance_id="wfi-1"))
    assert isinstance(record.resource, WorkflowExecution)
    assert record.resource.spec.workflow_instance_id == "wfi-1"


# Rules on create.


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_version", "agentic.stigmer.ai/v2"),
        ("api_version", "v1"),
        ("kind", "WorkflowExecution"),
        ("kind", "Agent"),
    ],
)
def test_unknown_kind_or_api_version(ledger_app: Ledger, field: str, value: str) -> None:
    resource = agent()
    setattr(resource, field, value)
    with refused(ledger_app, UnknownKindError) as info:
        ledger_app.create(resource)
    assert info.value.field == field
    assert value in str(info.value)


def test_a_message_that_is_no_resource_is_an_unknown_kind(ledger_app: Ledger) -> None:
    not_a_resource: Any = AgentExecutionSpec(agent_id="a", message="m")
    with refused(ledger_app, UnknownKindError):
        ledger_app.create(not_a_resource)


def test_agent_without_agent_id_and_session_id(ledger_app: Ledger) -> None:
    with refused(ledger_app, MissingFieldError) as info:
        ledger_app.create(agent("aex-noagent", agent_id="", session_id=""))
    assert info.value.field == "spec.agent_id"
    assert "aex-noagent" in str(info.value)
    assert "session_id" in str(info.value)
    with pytest.raises(ExecutionNotFoundError):
        ledger_app.get("aex-noagent")


def test_agent_without_message(ledger_app: Ledger) -> None:
    with refused(ledger_app, MissingFieldError) as info:
        ledger_app.create(agent(message=""))
    assert info.value.field == "spec.message"


def test_workflow_without_workflow_id_and_instance_id(ledger_app: Ledger) -> None:
    with refused(ledger_app, MissingFieldError) as info:
        ledger_app.create(workflow(workflow_id="", workflow_instance_id=""))
    assert info.value.field == "spec.workflow_id"
    assert "workflow_instance_id" in str(info.value)


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_callback_token_size_limit(ledger_app: Ledger, kind: str) -> None:
    assert MAX_CALLBACK_TOKEN_BYTES == 2048
    builder = agent if kind == "AgentExecution" else workflow
    accepted = ledger_app.create(builder(token=b"\x01" * 2048))
    assert len(ledger_app.get(accepted.id).spec.callback_token) == 2048
    with refused(ledger_app, CallbackTokenTooLargeError) as info:
        ledger_app.create(builder(token=b"\x01" * 2049))
    assert info.value.field == "spec.callback_token"
    assert "2049" in str(info.value)


@pytest.mark.parametrize(
    ("builder", "bad_id"),
    [
        (agent, "wex-01hzy"),  # the other kind's prefix
        (workflow, "aex-01hzy"),
        (agent, "aex"),  # no dash, no body
        (agent, "aex-"),  # empty body
        (agent, "AEX-01hzy"),
        (agent, "aex-01HZY"),  # uppercase
        (agent, "aex-" + "a" * 64),  # too long
        (agent, "aex-" + "a" * 10_000),
        (agent, "aex-_leading"),
        (agent, "aex-a b"),
        (agent, "aex-x'; DROP TABLE stored_events; --"),  # SQL metacharacters
        (agent, 'aex-x" OR "1"="1'),
        (agent, "aex-x%"),
        (agent, "aex-\x00x"),
        (agent, "exec-01hzy"),
    ],
)
def test_bad_ids_are_refused(
    ledger_app: Ledger, builder: Callable[[str], Resource], bad_id: str
) -> None:
    with refused(ledger_app, InvalidIdError) as info:
        ledger_app.create(builder(bad_id))
    assert info.value.field == "metadata.id"


def test_an_id_with_a_trailing_newline_is_refused(ledger_app: Ledger) -> None:
    """``$`` in a ``re.match`` pattern also matches before a final newline."""
    with refused(ledger_app, InvalidIdError):
        ledger_app.create(agent("aex-abc\n"))


def test_same_id_other_kind_is_impossible(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    with refused(ledger_app, InvalidIdError, execution_id):
        ledger_app.create(workflow(execution_id))


def test_status_on_create_is_refused(ledger_app: Ledger) -> None:
    resource = agent()
    resource.status.phase = agent_enum.EXECUTION_COMPLETED
    with refused(ledger_app, InvalidResourceError) as info:
        ledger_app.create(resource)
    assert info.value.field == "status"


def test_label_count_limit(ledger_app: Ledger) -> None:
    resource = agent()
    resource.metadata.labels.update({f"l{i}": "v" for i in range(MAX_LABELS)})
    resource.metadata.tags.extend(f"t{i}" for i in range(MAX_LABELS))
    assert len(ledger_app.create(resource).resource.metadata.labels) == MAX_LABELS
    resource = agent()
    resource.metadata.labels.update({f"l{i}": "v" for i in range(MAX_LABELS + 1)})
    with refused(ledger_app, LimitExceededError) as info:
        ledger_app.create(resource)
    assert info.value.field == "metadata.labels"
    resource = agent()
    resource.metadata.tags.extend(f"t{i}" for i in range(MAX_LABELS + 1))
    with refused(ledger_app, LimitExceededError):
        ledger_app.create(resource)


# Rules on writes.


def test_unknown_execution(ledger_app: Ledger) -> None:
    missing = "aex-01hzzzzzzzzzzzzzzzzzzzzz"
    with refused(ledger_app, ExecutionNotFoundError) as info:
        ledger_app.update_status(missing, AgentExecutionStatus(error="x"))
    assert missing in str(info.value)
    with refused(ledger_app, ExecutionNotFoundError):
        ledger_app.complete(missing)
    with refused(ledger_app, ExecutionNotFoundError):
        ledger_app.fail("wex-01hzzzzzzzzzzzzzzzzzzzzz", "boom")
    with refused(ledger_app, ExecutionNotFoundError):
        ledger_app.cancel(missing)
    with pytest.raises(ExecutionNotFoundError):
        ledger_app.get(missing)
    with pytest.raises(ExecutionNotFoundError):
        ledger_app.history(missing)


def test_reads_and_writes_with_a_foreign_prefix_are_invalid_ids(ledger_app: Ledger) -> None:
    with refused(ledger_app, InvalidIdError):
        ledger_app.complete("run-123")
    with pytest.raises(InvalidIdError):
        ledger_app.get("run-123")
    with pytest.raises(InvalidIdError):
        ledger_app.history("")


@pytest.mark.parametrize(
    "bad_id",
    [
        "aex-x'; DROP TABLE stored_events; --",
        "aex-\x00x",
        "aex-ABC",
        "aex-abc\n",
        "aex-" + "a" * 500,
    ],
)
def test_malformed_ids_on_reads_and_writes_are_invalid_ids(ledger_app: Ledger, bad_id: str) -> None:
    """Every command checks the whole id: a malformed one never reaches the store."""
    existing = ledger_app.create(agent()).id
    with pytest.raises(InvalidIdError) as read:
        ledger_app.get(bad_id)
    assert read.type is InvalidIdError
    with pytest.raises(InvalidIdError) as history:
        ledger_app.history(bad_id)
    assert history.type is InvalidIdError
    with refused(ledger_app, InvalidIdError):
        ledger_app.cancel(bad_id)
    with refused(ledger_app, InvalidIdError):
        ledger_app.update_status(bad_id, AgentExecutionStatus(error="x"))
    assert ledger_app.get(existing).metadata.id == existing  # the store is intact


@pytest.mark.parametrize("terminal", ["complete", "fail", "cancel", "patch"])
@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_no_write_after_a_terminal_phase(ledger_app: Ledger, kind: str, terminal: str) -> None:
    app = ledger_app
    execution_id = app.create(new(kind)).id
    app.update_status(execution_id, status_for(kind, Phase.IN_PROGRESS))
    if terminal == "complete":
        app.complete(execution_id)
        expected = "EXECUTION_COMPLETED"
    elif terminal == "fail":
        app.fail(execution_id, "boom")
        expected = "EXECUTION_FAILED"
    elif terminal == "cancel":
        app.cancel(execution_id)
        expected = "EXECUTION_CANCELLED"
    else:
        app.update_status(execution_id, status_for(kind, Phase.FAILED))
        expected = "EXECUTION_FAILED"

    attempts: list[Callable[[], object]] = [
        lambda: app.update_status(execution_id, status_for(kind, Phase.IN_PROGRESS)),
        lambda: app.update_status(execution_id, status_for(kind)),
        lambda: app.update_status(execution_id, status_for(kind, Phase.COMPLETED)),
        lambda: app.complete(execution_id),
        lambda: app.fail(execution_id, "again"),
        lambda: app.cancel(execution_id, "too late"),
    ]
    for attempt in attempts:
        with refused(app, TerminalPhaseError, execution_id) as info:
            attempt()
        assert expected in str(info.value)
        assert execution_id in str(info.value)
        assert info.value.current == expected
    assert history_types(app, execution_id).count("Completed") == 1


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_phase_cannot_go_backwards(ledger_app: Ledger, kind: str) -> None:
    app = ledger_app
    execution_id = app.create(new(kind)).id
    app.update_status(execution_id, status_for(kind, Phase.IN_PROGRESS))
    with refused(app, PhaseBackwardsError, execution_id) as info:
        app.update_status(execution_id, status_for(kind, Phase.PENDING))
    assert "EXECUTION_IN_PROGRESS" in str(info.value)
    assert "EXECUTION_PENDING" in str(info.value)
    assert info.value.current == "EXECUTION_IN_PROGRESS"
    assert info.value.requested == "EXECUTION_PENDING"
    # The phase it is in again, or an empty patch, is fine and changes nothing: nothing
    # is appended (issue 13: a re-run is not a new write).
    again = app.update_status(execution_id, status_for(kind, Phase.IN_PROGRESS))
    assert (again.version, again.written) == (2, False)
    empty = app.update_status(execution_id, status_for(kind))
    assert (empty.phase, empty.version, empty.written) == (Phase.IN_PROGRESS, 2, False)
    assert len(app.history(execution_id)) == 2


def test_a_phase_outside_the_enum_is_refused(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    patch = AgentExecutionStatus()
    patch.phase = 9  # type: ignore[assignment]
    with refused(ledger_app, InvalidResourceError, execution_id) as info:
        ledger_app.update_status(execution_id, patch)
    assert info.value.field == "status.phase"


def test_audit_in_a_patch_is_refused(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    patch = AgentExecutionStatus()
    patch.audit.status_audit.event = "forged"
    with refused(ledger_app, InvalidResourceError, execution_id) as info:
        ledger_app.update_status(execution_id, patch)
    assert info.value.field == "status.audit"
    assert ledger_app.get(execution_id).status.audit.status_audit.event == "created"


def test_a_patch_of_the_other_kind_is_refused(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    wrong: Any = WorkflowExecutionStatus(error="x")
    with refused(ledger_app, InvalidResourceError, execution_id) as info:
        ledger_app.update_status(execution_id, wrong)
    assert info.value.field == "status"


@pytest.mark.parametrize(
    ("kind", "patch"),
    [
        ("AgentExecution", AgentExecutionStatus(tool_calls=[agent_status.ToolCall(name="x")])),
        (
            "AgentExecution",
            AgentExecutionStatus(sub_agent_executions=[agent_status.SubAgentExecution(name="x")]),
        ),
        (
            "WorkflowExecution",
            WorkflowExecutionStatus(tasks=[workflow_status.WorkflowTask(task_name="x")]),
        ),
    ],
)
def test_upsert_entry_without_id_is_refused(ledger_app: Ledger, kind: str, patch: Status) -> None:
    execution_id = ledger_app.create(new(kind)).id
    with refused(ledger_app, InvalidResourceError, execution_id) as info:
        ledger_app.update_status(execution_id, patch)
    assert info.value.field.endswith("[0].id") or info.value.field.endswith("[0].task_id")


def test_upsert_entry_twice_in_one_patch_is_refused(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    patch = AgentExecutionStatus(
        tool_calls=[agent_status.ToolCall(id="c1"), agent_status.ToolCall(id="c1")]
    )
    with refused(ledger_app, InvalidResourceError, execution_id):
        ledger_app.update_status(execution_id, patch)


def test_struct_depth_limit_in_a_patch(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(workflow()).id
    ok = WorkflowExecutionStatus(output=struct(nested(MAX_STRUCT_DEPTH)))
    assert ledger_app.update_status(execution_id, ok).version == 2
    too_deep = WorkflowExecutionStatus(
        tasks=[
            workflow_status.WorkflowTask(task_id="t", input=struct(nested(MAX_STRUCT_DEPTH + 1)))
        ]
    )
    with refused(ledger_app, LimitExceededError, execution_id) as info:
        ledger_app.update_status(execution_id, too_deep)
    assert info.value.field.startswith("status.tasks[0].input")


def test_struct_depth_limit_in_outcomes(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(workflow()).id
    with refused(ledger_app, LimitExceededError, execution_id) as info:
        ledger_app.complete(execution_id, nested(MAX_STRUCT_DEPTH + 1))
    assert info.value.field == "output"
    with refused(ledger_app, LimitExceededError, execution_id):
        ledger_app.fail(execution_id, "boom", details=nested(MAX_STRUCT_DEPTH + 1))
    assert ledger_app.complete(execution_id, nested(MAX_STRUCT_DEPTH)).phase is Phase.COMPLETED


def test_a_failure_needs_a_message(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    with refused(ledger_app, InvalidResourceError, execution_id) as info:
        ledger_app.fail(execution_id, "")
    assert info.value.field == "error.message"


def test_an_output_that_is_not_json_is_refused(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(workflow()).id
    with refused(ledger_app, InvalidResourceError, execution_id):
        ledger_app.complete(execution_id, {"when": object()})
    with refused(ledger_app, InvalidResourceError, execution_id):
        ledger_app.complete(execution_id, {"x": float("nan")})


# Status patch semantics.


def test_scalars_overwrite_only_when_set(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(workflow()).id
    app.update_status(
        execution_id,
        WorkflowExecutionStatus(
            phase=workflow_enum.EXECUTION_IN_PROGRESS,
            temporal_workflow_id="twf-1",
            started_at="2024-01-01T00:00:00Z",
            error="transient",
        ),
    )
    status = app.get(execution_id).status
    assert status.started_at == "2024-01-01T00:00:00Z"  # given, not replaced by the ledger
    app.update_status(execution_id, WorkflowExecutionStatus(temporal_workflow_id="twf-2"))
    status = app.get(execution_id).status
    assert isinstance(status, WorkflowExecutionStatus)
    assert status.temporal_workflow_id == "twf-2"
    assert status.error == "transient"  # unset in the patch: kept
    assert status.phase == workflow_enum.EXECUTION_IN_PROGRESS  # unspecified: kept
    assert status.started_at == "2024-01-01T00:00:00Z"
    app.update_status(execution_id, WorkflowExecutionStatus(output=struct({"a": 1})))
    app.update_status(execution_id, WorkflowExecutionStatus(output=struct({"b": 2})))
    status = app.get(execution_id).status
    assert isinstance(status, WorkflowExecutionStatus)
    assert MessageToDict(status.output) == {"b": 2}  # a message field replaces


def test_tool_calls_and_sub_agents_upsert_by_id(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(agent()).id
    app.update_status(
        execution_id,
        AgentExecutionStatus(
            tool_calls=[
                agent_status.ToolCall(
                    id="c1",
                    name="search",
                    args=struct({"q": "x"}),
                    status=agent_enum.TOOL_CALL_RUNNING,
                    started_at="t0",
                ),
                agent_status.ToolCall(id="c2", name="fetch", status=agent_enum.TOOL_CALL_PENDING),
            ],
            sub_agent_executions=[
                agent_status.SubAgentExecution(
                    id="s1", name="helper", status=agent_enum.SUB_AGENT_IN_PROGRESS
                )
            ],
        ),
    )
    app.update_status(
        execution_id,
        AgentExecutionStatus(
            tool_calls=[
                agent_status.ToolCall(
                    id="c1",
                    result="found",
                    args=struct({"limit": 3}),
                    status=agent_enum.TOOL_CALL_COMPLETED,
                ),
                agent_status.ToolCall(id="c3", name="write"),
            ],
            sub_agent_executions=[
                agent_status.SubAgentExecution(
                    id="s1", output="done", status=agent_enum.SUB_AGENT_COMPLETED
                )
            ],
        ),
    )
    status = app.get(execution_id).status
    assert isinstance(status, AgentExecutionStatus)
    assert [c.id for c in status.tool_calls] == ["c1", "c2", "c3"]
    c1 = status.tool_calls[0]
    assert c1.name == "search"  # kept
    assert c1.started_at == "t0"  # kept
    assert c1.result == "found"  # set
    assert c1.status == agent_enum.TOOL_CALL_COMPLETED  # overwritten
    assert MessageToDict(c1.args) == {"q": "x", "limit": 3}  # Structs merge
    assert status.tool_calls[1].status == agent_enum.TOOL_CALL_PENDING
    assert len(status.sub_agent_executions) == 1
    s1 = status.sub_agent_executions[0]
    assert (s1.name, s1.output, s1.status) == ("helper", "done", agent_enum.SUB_AGENT_COMPLETED)


def test_workflow_tasks_upsert_by_task_id(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(workflow()).id
    app.update_status(
        execution_id,
        WorkflowExecutionStatus(
            tasks=[
                workflow_status.WorkflowTask(
                    task_id="t1", task_name="a", status=workflow_enum.WORKFLOW_TASK_IN_PROGRESS
                ),
                workflow_status.WorkflowTask(task_id="t2", task_name="b"),
            ]
        ),
    )
    app.update_status(
        execution_id,
        WorkflowExecutionStatus(
            tasks=[
                workflow_status.WorkflowTask(
                    task_id="t1",
                    status=workflow_enum.WORKFLOW_TASK_COMPLETED,
                    output=struct({"r": 1}),
                ),
                workflow_status.WorkflowTask(task_id="t3", task_name="c"),
            ]
        ),
    )
    status = app.get(execution_id).status
    assert isinstance(status, WorkflowExecutionStatus)
    assert [t.task_id for t in status.tasks] == ["t1", "t2", "t3"]
    t1 = status.tasks[0]
    assert t1.task_name == "a"
    assert t1.status == workflow_enum.WORKFLOW_TASK_COMPLETED
    assert MessageToDict(t1.output) == {"r": 1}


def test_messages_append(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(agent()).id
    for batch in (["a", "b"], ["a"], ["c"]):
        app.update_status(
            execution_id,
            AgentExecutionStatus(messages=[agent_status.AgentMessage(content=c) for c in batch]),
        )
    status = app.get(execution_id).status
    assert isinstance(status, AgentExecutionStatus)
    assert [m.content for m in status.messages] == ["a", "b", "a", "c"]


def test_todos_merge_by_key(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(agent()).id
    app.update_status(
        execution_id,
        AgentExecutionStatus(
            todos={
                "t1": agent_status.TodoItem(
                    id="t1", content="plan", status=agent_enum.TODO_PENDING
                ),
                "t2": agent_status.TodoItem(id="t2", content="do", status=agent_enum.TODO_PENDING),
            }
        ),
    )
    app.update_status(
        execution_id,
        AgentExecutionStatus(
            todos={
                "t1": agent_status.TodoItem(
                    id="t1", content="plan", status=agent_enum.TODO_COMPLETED
                ),
                "t3": agent_status.TodoItem(id="t3", content="check"),
            }
        ),
    )
    status = app.get(execution_id).status
    assert isinstance(status, AgentExecutionStatus)
    assert sorted(status.todos) == ["t1", "t2", "t3"]
    assert status.todos["t1"].status == agent_enum.TODO_COMPLETED
    assert status.todos["t1"].content == "plan"
    assert status.todos["t2"].status == agent_enum.TODO_PENDING
    assert status.todos["t3"].content == "check"


@pytest.mark.parametrize(
    ("phase", "expected"),
    [(Phase.COMPLETED, None), (Phase.FAILED, "it broke"), (Phase.CANCELLED, "stopped")],
)
def test_terminal_phase_in_a_patch_appends_status_changed_and_completed(
    ledger_app: Ledger, phase: Phase, expected: str | None
) -> None:
    app = ledger_app
    execution_id = app.create(agent()).id
    app.update_status(execution_id, AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS))
    before = event_count(app)
    patch = AgentExecutionStatus(
        phase=int(phase),  # type: ignore[arg-type]
        messages=[agent_status.AgentMessage(content="last words")],
        error=expected or "",
    )
    record = app.update_status(execution_id, patch, expected_version=2)
    assert record.version == 4
    assert record.phase is phase
    assert event_count(app) == before + 2
    history = app.history(execution_id)
    assert [h.type for h in history] == ["Created", "StatusChanged", "StatusChanged", "Completed"]
    completed = history[-1].event
    assert isinstance(completed, Execution.Completed)
    assert completed.phase == phase
    status = app.get(execution_id).status
    assert isinstance(status, AgentExecutionStatus)
    assert [m.content for m in status.messages] == ["last words"]
    assert status.completed_at
    if phase is Phase.FAILED:
        assert completed.error is not None
        assert completed.error["message"] == "it broke"
        assert status.error == "it broke"
    if phase is Phase.CANCELLED:
        assert completed.reason == "stopped"


def test_terminal_workflow_patch_carries_its_output(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(workflow()).id
    app.update_status(
        execution_id,
        WorkflowExecutionStatus(phase=workflow_enum.EXECUTION_COMPLETED, output=struct({"x": 1})),
    )
    completed = app.history(execution_id)[-1].event
    assert isinstance(completed, Execution.Completed)
    assert completed.output == {"x": 1}
    status = app.get(execution_id).status
    assert isinstance(status, WorkflowExecutionStatus)
    assert MessageToDict(status.output) == {"x": 1}


# Idempotent create.


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_create_is_idempotent_on_the_id(ledger_app: Ledger, kind: str) -> None:
    app = ledger_app
    first = app.create(new(kind))
    again = new(kind)
    again.metadata.id = first.id
    before = event_count(app)
    second = app.create(again)
    assert second.id == first.id
    assert second.version == 1
    assert second.resource == first.resource
    assert event_count(app) == before
    assert history_types(app, first.id) == ["Created"]


def test_create_same_id_different_spec_is_a_conflict(ledger_app: Ledger) -> None:
    app = ledger_app
    first = app.create(agent("aex-conflict"))
    for changed in (
        agent("aex-conflict", message="something else"),
        agent("aex-conflict", token=TOKEN + b"x"),
        agent("aex-conflict", session_id="s-2"),
    ):
        with refused(app, CreateConflictError, first.id) as info:
            app.create(changed)
        assert "aex-conflict" in str(info.value)
    recorded = app.get(first.id)
    assert isinstance(recorded, AgentExecution)
    assert recorded.spec.message == "summarise the report"


def test_idempotent_create_after_progress_returns_the_current_execution(
    ledger_app: Ledger,
) -> None:
    app = ledger_app
    first = app.create(workflow("wex-retry"))
    app.update_status(first.id, WorkflowExecutionStatus(phase=workflow_enum.EXECUTION_IN_PROGRESS))
    again = app.create(workflow("wex-retry"))
    assert again.version == 2
    assert again.phase is Phase.IN_PROGRESS


# Optimistic concurrency.


def test_expected_version(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(agent()).id
    record = app.update_status(
        execution_id,
        AgentExecutionStatus(messages=[agent_status.AgentMessage(content="1")]),
        expected_version=1,
    )
    assert record.version == 2
    for stale in (1, 0, 3):
        with refused(app, VersionConflictError, execution_id) as info:
            app.update_status(
                execution_id,
                AgentExecutionStatus(messages=[agent_status.AgentMessage(content="stale")]),
                expected_version=stale,
            )
        assert info.value.expected == stale
        assert info.value.actual == 2
    with refused(app, VersionConflictError, execution_id):
        app.complete(execution_id, expected_version=1)
    with refused(app, VersionConflictError, execution_id):
        app.fail(execution_id, "x", expected_version=1)
    with refused(app, VersionConflictError, execution_id):
        app.cancel(execution_id, expected_version=1)
    status = app.get(execution_id).status
    assert isinstance(status, AgentExecutionStatus)
    assert [m.content for m in status.messages] == ["1"]
    assert app.cancel(execution_id, expected_version=2).version == 3


def test_a_stale_writer_loses_against_another_ledger_instance(store_url: str) -> None:
    first = open_ledger(store_url)
    second = open_ledger(store_url)
    try:
        execution_id = first.create(agent()).id
        seen = second.read(execution_id).version
        first.update_status(execution_id, AgentExecutionStatus(error="first"))
        with refused(second, VersionConflictError, execution_id):
            second.complete(execution_id, expected_version=seen)
        assert second.read(execution_id).phase is Phase.PENDING
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("cipher", [False, True])
@pytest.mark.parametrize("loser", ["fail", "complete"])
def test_a_racing_completion_with_the_same_timestamp_still_loses(
    store_url: str, monkeypatch: pytest.MonkeyPatch, loser: str, cipher: bool
) -> None:
    """Two writers complete one execution with events of the same type, version and
    timestamp (two processes released together stamp the same microsecond). The one
    that lost must be told so: its conflict is another writer's event, not its own
    acknowledgement lost, even when the events are alike down to the timestamp."""
    moment = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)
    monkeypatch.setattr(TextIdEvent, "create_timestamp", staticmethod(lambda: moment))
    key = AESCipher.create_key(32) if cipher else None
    winner = open_ledger(store_url, cipher_key=key)
    stale = open_ledger(store_url, cipher_key=key)
    try:
        execution_id = stale.create(agent()).id  # ``stale`` caches version 1.
        winner.complete(execution_id, {"by": "winner"})
        with refused(stale, TerminalPhaseError, execution_id) as info:
            if loser == "fail":
                stale.fail(execution_id, "too late")
            else:
                stale.complete(execution_id, {"by": "winner"})  # Alike in every field.
        assert info.value.current == "EXECUTION_COMPLETED"
        completed = stale.history(execution_id)[-1].event
        assert isinstance(completed, Execution.Completed)
        assert completed.output == {"by": "winner"}
    finally:
        winner.close()
        stale.close()


# Outcomes.


def test_complete_output_lands_in_workflow_status(ledger_app: Ledger) -> None:
    app = ledger_app
    execution_id = app.create(workflow()).id
    app.complete(execution_id, {"result": {"n": 1, "ok": True}})
    status = app.get(execution_id).status
    assert isinstance(status, WorkflowExecutionStatus)
    assert MessageToDict(status.output) == {"result": {"n": 1, "ok": True}}
    completed = app.history(execution_id)[-1].event
    assert isinstance(completed, Execution.Completed)
    assert completed.output == {"result": {"n": 1, "ok": True}}
    assert completed.error is None


def test_agent_complete_records_the_output_in_the_event(ledger_app: Ledger) -> None:
    execution_id = ledger_app.create(agent()).id
    ledger_app.complete(execution_id, {"answer": "yes"})
    completed = ledger_app.history(execution_id)[-1].event
    assert isinstance(completed, Execution.Completed)
    assert completed.phase == Phase.COMPLETED
    assert completed.output == {"answer": "yes"}


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_fail_records_a_structured_error(ledger_app: Ledger, kind: str) -> None:
    app = ledger_app
    execution_id = app.create(new(kind)).id
    app.fail(
        execution_id,
        "model timed out",
        error_type="Timeout",
        details={"after_s": 30, "retries": [1, 2]},
        actor="runner",
    )
    history = app.history(execution_id)
    completed = history[-1].event
    assert isinstance(completed, Execution.Completed)
    assert history[-1].phase is Phase.FAILED
    assert completed.error == {
        "type": "Timeout",
        "message": "model timed out",
        "details": {"after_s": 30, "retries": [1, 2]},
    }
    assert completed.output is None
    assert completed.actor == "runner"
    assert app.get(execution_id).status.error == "model timed out"

    other = app.create(new(kind)).id
    app.fail(other, "plain")
    plain = app.history(other)[-1].event
    assert isinstance(plain, Execution.Completed)
    assert plain.error == {"type": "ExecutionFailed", "message": "plain", "details": {}}


@pytest.mark.parametrize("kind", ["AgentExecution", "WorkflowExecution"])
def test_cancel_records_its_reason(ledger_app: Ledger, kind: str) -> None:
    app = ledger_app
    execution_id = app.create(new(kind)).id
    app.update_status(execution_id, status_for(kind, Phase.IN_PROGRESS))
    record = app.cancel(execution_id, "user pressed stop")
    assert record.phase is Phase.CANCELLED
    completed = app.history(execution_id)[-1].event
    assert isinstance(completed, Execution.Completed)
    assert completed.phase == Phase.CANCELLED
    assert completed.reason == "user pressed stop"
    assert completed.error is None
    assert completed.output is None


def test_generated_ids_are_unique_and_well_formed(ledger_app: Ledger) -> None:
    ids = [ledger_app.create(agent()).id for _ in range(5)]
    ids += [ledger_app.create(workflow()).id for _ in range(5)]
    assert len(set(ids)) == 10
    for execution_id in ids[:5]:
        assert re.fullmatch(r"^aex-[0-9a-z]{26}$", execution_id)
    for execution_id in ids[5:]:
        assert re.fullmatch(r"^wex-[0-9a-z]{26}$", execution_id)


# Encryption at rest.


def raw_states(url: str) -> list[bytes]:
    """Every stored event's raw ``state`` column, straight from the database."""
    parts = urlsplit(url)
    states: list[bytes] = []
    if parts.scheme == "sqlite":
        with sqlite3.connect(parts.path[1:]) as conn:
            tables = [
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                if "state" in columns:
                    states += [bytes(r[0]) for r in conn.execute(f"SELECT state FROM {table}")]
        return states
    schema = parse_qs(parts.query)["schema"][0]
    base = parts._replace(query="").geturl()
    with psycopg.connect(base) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = %s AND column_name = 'state'",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT state FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            states += [bytes(r[0]) for r in conn.execute(query)]
    return states


def exposes(raw: bytes, secret: bytes) -> bool:
    """Whether ``raw`` holds ``secret`` in the clear or inside any base64 text.

    The secret sits somewhere inside a larger base64-encoded value; one of the
    three alignments of its bytes is encoded verbatim there.
    """
    if secret in raw:
        return True
    for shift in range(3):
        chunk = secret[shift:]
        chunk = chunk[: len(chunk) // 3 * 3]
        if base64.b64encode(chunk) in raw:
            return True
    return False


@pytest.mark.parametrize("with_key", [False, True])
def test_encryption_at_rest(store_url: str, with_key: bool) -> None:
    key = AESCipher.create_key(32) if with_key else None
    app = open_ledger(store_url, cipher_key=key)
    try:
        execution_id = app.create(agent()).id
        app.complete(execution_id)
    finally:
        app.close()
    states = raw_states(store_url)
    assert len(states) == 2
    leaked = any(exposes(state, TOKEN) for state in states)
    assert leaked is not with_key
    message = b"summarise the report"
    assert any(exposes(state, message) for state in states) is not with_key

    reader = open_ledger(store_url, cipher_key=key)
    try:
        resource = reader.get(execution_id)
        assert resource.spec.callback_token == TOKEN
        assert resource.status.phase == agent_enum.EXECUTION_COMPLETED
    finally:
        reader.close()
