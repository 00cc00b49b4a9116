"""Wire compatibility of the resource contract (protos/) with the platform's messages.

The platform's AgentExecution and WorkflowExecution messages are encoded here by
hand, field by field, with a tiny protobuf encoder that knows nothing of the
generated classes: only the field numbers and wire types of the contract. The
bytes must parse with the generated classes into exactly the values put in, and
serialize back to exactly the same bytes. A wrong field number, wire type or
enum number therefore fails here, even if the .proto and the generated code
agree with each other.

Maps are written in ascending key order and messages are serialized with
``deterministic=True`` (which sorts map entries by key); protobuf serializes the
fields of a message in field-number order, so the hand-built bytes do too.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ledger.api.agentexecution.v1 import api_pb2 as agent_api
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.api.agentexecution.v1 import spec_pb2 as agent_spec
from ledger.api.agentexecution.v1 import status_pb2 as agent_status
from ledger.api.commons.v1 import audit_pb2, execution_value_pb2, metadata_pb2
from ledger.api.workflowexecution.v1 import api_pb2 as workflow_api
from ledger.api.workflowexecution.v1 import enum_pb2 as workflow_enum
from ledger.api.workflowexecution.v1 import spec_pb2 as workflow_spec
from ledger.api.workflowexecution.v1 import status_pb2 as workflow_status

# ---------------------------------------------------------------------------
# A tiny protobuf encoder, independent of the generated code.
# ---------------------------------------------------------------------------

VARINT = 0
I64 = 1
LEN = 2


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer, least significant group first."""
    assert value >= 0
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def uint(field: int, value: int) -> bytes:
    """A varint field: integers, bools and enums."""
    return key(field, VARINT) + varint(value)


def flag(field: int, value: bool) -> bytes:
    return uint(field, int(value))


def blob(field: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, strings, messages, map entries."""
    return key(field, LEN) + varint(len(data)) + data


def text(field: int, value: str) -> bytes:
    return blob(field, value.encode("utf-8"))


def msg(field: int, *parts: bytes) -> bytes:
    """An embedded message made of the given encoded fields."""
    return blob(field, b"".join(parts))


def double(field: int, value: float) -> bytes:
    return key(field, I64) + struct.pack("<d", value)


def entries(field: int, mapping: dict[str, bytes]) -> bytes:
    """A map<string, V> field: one entry (key = 1, value = 2) per item, sorted by key.

    ``mapping`` holds each value already encoded as field 2 of the entry.
    """
    return b"".join(msg(field, text(1, k), mapping[k]) for k in sorted(mapping))


def string_map(field: int, mapping: dict[str, str]) -> bytes:
    return entries(field, {k: text(2, v) for k, v in mapping.items()})


# google.protobuf.Struct: fields = 1 (map<string, Value>).
# google.protobuf.Value: null_value = 1, number_value = 2, string_value = 3,
#   bool_value = 4, struct_value = 5, list_value = 6.
# google.protobuf.ListValue: values = 1.


def struct_body(values: dict[str, bytes]) -> bytes:
    """The body of a Struct; ``values`` maps each key to an encoded Value body."""
    return entries(1, {k: msg(2, v) for k, v in values.items()})


def struct_field(field: int, values: dict[str, bytes]) -> bytes:
    return blob(field, struct_body(values))


def v_null() -> bytes:
    return uint(1, 0)


def v_number(value: float) -> bytes:
    return double(2, value)


def v_string(value: str) -> bytes:
    return text(3, value)


def v_bool(value: bool) -> bytes:
    return flag(4, value)


def v_struct(values: dict[str, bytes]) -> bytes:
    return struct_field(5, values)


def v_list(*values: bytes) -> bytes:
    return msg(6, *(msg(1, v) for v in values))


# google.protobuf.Timestamp: seconds = 1, nanos = 2.


def timestamp(field: int, seconds: int, nanos: int) -> bytes:
    return msg(field, uint(1, seconds), uint(2, nanos))


def test_encoder_matches_the_protobuf_encoding_spec() -> None:
    # Examples from the protobuf encoding documentation.
    assert varint(1) == b"\x01"
    assert varint(150) == b"\x96\x01"
    assert varint(300) == b"\xac\x02"
    assert uint(1, 150) == b"\x08\x96\x01"
    assert text(2, "testing") == b"\x12\x07testing"
    # Field 99 needs a two-byte key: (99 << 3) | 2 = 794.
    assert key(99, LEN) == b"\x9a\x06"
    assert double(1, 1.0) == b"\x09" + b"\x00" * 6 + b"\xf0\x3f"


# ---------------------------------------------------------------------------
# Shared pieces: metadata, audit, runtime values.
# ---------------------------------------------------------------------------

# Every byte value, including NUL and bytes that are never valid UTF-8: the
# token is an opaque binary blob and must survive unchanged.
AGENT_TOKEN = bytes(range(256))
WORKFLOW_TOKEN = b"\xff\xfe\x00temporal-task-token\x80\x01"

CREATED_AT = (1767225600, 123456789)  # 2026-01-01T00:00:00.123456789Z
UPDATED_AT = (1767229200, 5)  # 2026-01-01T01:00:00.000000005Z


def metadata_bytes(resource_id: str) -> bytes:
    return b"".join(
        [
            text(1, "nightly report"),
            text(2, "nightly-report"),
            text(3, resource_id),
            text(4, "acme"),
            uint(5, 2),  # ApiResourceOwnerScope.organization
            string_map(6, {"team": "data", "tier": "gold"}),
            string_map(7, {"ledger.example/origin": "test"}),
            text(8, "reporting"),
            text(8, "nightly"),
        ]
    )


def check_metadata(metadata: metadata_pb2.ApiResourceMetadata, resource_id: str) -> None:
    assert metadata.name == "nightly report"
    assert metadata.slug == "nightly-report"
    assert metadata.id == resource_id
    assert metadata.org == "acme"
    assert metadata.owner_scope == metadata_pb2.organization
    assert dict(metadata.labels) == {"team": "data", "tier": "gold"}
    assert dict(metadata.annotations) == {"ledger.example/origin": "test"}
    assert list(metadata.tags) == ["reporting", "nightly"]


def audit_info_bytes(event: str) -> bytes:
    return b"".join(
        [
            msg(1, text(1, "usr-alice"), text(2, "https://example.com/alice.png")),
            timestamp(2, *CREATED_AT),
            msg(3, text(1, "svc-runner"), text(2, "https://example.com/runner.png")),
            timestamp(4, *UPDATED_AT),
            text(5, event),
        ]
    )


AUDIT = msg(1, audit_info_bytes("created")) + msg(2, audit_info_bytes("updated"))


def check_audit_info(info: audit_pb2.ApiResourceAuditInfo, event: str) -> None:
    assert info.created_by.id == "usr-alice"
    assert info.created_by.avatar == "https://example.com/alice.png"
    assert (info.created_at.seconds, info.created_at.nanos) == CREATED_AT
    assert info.created_at.ToJsonString() == "2026-01-01T00:00:00.123456789Z"
    assert info.updated_by.id == "svc-runner"
    assert info.updated_by.avatar == "https://example.com/runner.png"
    assert (info.updated_at.seconds, info.updated_at.nanos) == UPDATED_AT
    assert info.event == event


def check_audit(audit: audit_pb2.ApiResourceAudit) -> None:
    check_audit_info(audit.spec_audit, "created")
    check_audit_info(audit.status_audit, "updated")


# map<string, ExecutionValue>; ExecutionValue: value = 1, is_secret = 2.
RUNTIME_ENV = entries(
    5,
    {
        "API_KEY": msg(2, text(1, "s3cr3t"), flag(2, True)),
        "REGION": msg(2, text(1, "eu-west-1")),
    },
)


def check_runtime_env(env: Mapping[str, execution_value_pb2.ExecutionValue]) -> None:
    assert sorted(env) == ["API_KEY", "REGION"]
    assert env["API_KEY"].value == "s3cr3t"
    assert env["API_KEY"].is_secret is True
    assert env["REGION"].value == "eu-west-1"
    assert env["REGION"].is_secret is False


def as_dict(message: Message) -> dict[str, Any]:
    """A Struct as plain JSON-like Python values."""
    return json_format.MessageToDict(message)


def message_param_id(param: object) -> str | None:
    """Test ids: the message name for a class, pytest's default for anything else."""
    if isinstance(param, type) and issubclass(param, Message):
        return param.DESCRIPTOR.name
    return None


def assert_round_trip(message: Message, wire: bytes) -> None:
    """No top-level field went unrecognised, and serializing gives back the same bytes.

    (A misnumbered nested field is caught by the value assertions: its value
    would be missing.)
    """
    assert len(UnknownFieldSet(message)) == 0
    assert message.SerializeToString(deterministic=True) == wire


# ---------------------------------------------------------------------------
# AgentExecution
# ---------------------------------------------------------------------------

AGENT_ID = "aex-01JH8Z6Q4W7Y2N5M3K9V0XTB1C"

# ToolCall: id 1, name 2, args 3, result 4, status 5, started_at 7,
# completed_at 8, error 9.
TOOL_CALL = b"".join(
    [
        text(1, "call-1"),
        text(2, "read_file"),
        struct_field(
            3,
            {
                "count": v_number(3),
                "encoding": v_null(),
                "options": v_struct({"follow": v_bool(True)}),
                "path": v_string("/tmp/report.csv"),
                "ranges": v_list(v_number(0.5), v_string("all")),
            },
        ),
        text(4, "partial"),
        uint(5, 4),  # TOOL_CALL_FAILED
        text(7, "2026-01-01T00:00:01Z"),
        text(8, "2026-01-01T00:00:02Z"),
        text(9, "file too large"),
    ]
)

TOOL_CALL_ARGS = {
    "count": 3.0,
    "encoding": None,
    "options": {"follow": True},
    "path": "/tmp/report.csv",
    "ranges": [0.5, "all"],
}


def check_tool_call(call: agent_status.ToolCall) -> None:
    assert call.id == "call-1"
    assert call.name == "read_file"
    assert as_dict(call.args) == TOOL_CALL_ARGS
    assert call.args.fields["encoding"].WhichOneof("kind") == "null_value"
    assert call.args.fields["count"].WhichOneof("kind") == "number_value"
    assert call.result == "partial"
    assert call.status == agent_enum.TOOL_CALL_FAILED
    assert call.started_at == "2026-01-01T00:00:01Z"
    assert call.completed_at == "2026-01-01T00:00:02Z"
    assert call.error == "file too large"


AGENT_SPEC = b"".join(
    [
        text(1, "ses-42"),
        text(2, "agt-reporter"),
        text(3, "Summarise last night's runs"),
        msg(4, text(1, "claude-sonnet-4")),
        RUNTIME_ENV,
        blob(6, AGENT_TOKEN),
    ]
)

AGENT_STATUS = b"".join(
    [
        # messages = 1; AgentMessage: type 1, content 2, timestamp 3,
        # tool_calls 4, metadata 5.
        msg(
            1,
            uint(1, 1),  # MESSAGE_HUMAN
            text(2, "Summarise last night's runs"),
            text(3, "2026-01-01T00:00:00Z"),
        ),
        msg(
            1,
            uint(1, 2),  # MESSAGE_AI
            text(2, "Reading the report"),
            text(3, "2026-01-01T00:00:01Z"),
            msg(4, TOOL_CALL),
            struct_field(5, {"tokens": v_number(42)}),
        ),
        uint(2, 5),  # phase = EXECUTION_CANCELLED
        msg(3, TOOL_CALL),  # tool_calls = 3
        # sub_agent_executions = 4; SubAgentExecution: id 1, name 2, input 3,
        # output 4, status 5, started_at 6, completed_at 7, error 8, metadata 9.
        msg(
            4,
            text(1, "sub-1"),
            text(2, "researcher"),
            text(3, "find the failures"),
            text(4, "two failures"),
            uint(5, 3),  # SUB_AGENT_COMPLETED
            text(6, "2026-01-01T00:00:03Z"),
            text(7, "2026-01-01T00:00:09Z"),
            text(8, "one source unreachable"),
            struct_field(9, {"depth": v_number(2)}),
        ),
        text(6, "cancelled by the operator"),  # error = 6
        text(7, "2026-01-01T00:00:00.5Z"),  # started_at = 7
        text(8, "2026-01-01T00:00:10Z"),  # completed_at = 8
        # todos = 9: map<string, TodoItem>; TodoItem: id 1, content 2,
        # status 3, created_at 4, updated_at 5.
        entries(
            9,
            {
                "todo-1": msg(
                    2,
                    text(1, "todo-1"),
                    text(2, "collect runs"),
                    uint(3, 3),  # TODO_COMPLETED
                    text(4, "2026-01-01T00:00:01Z"),
                    text(5, "2026-01-01T00:00:05Z"),
                ),
                "todo-2": msg(
                    2,
                    text(1, "todo-2"),
                    text(2, "write summary"),
                    uint(3, 4),  # TODO_CANCELLED
                    text(4, "2026-01-01T00:00:02Z"),
                    text(5, "2026-01-01T00:00:10Z"),
                ),
            },
        ),
        msg(99, AUDIT),  # audit = 99
    ]
)

AGENT_EXECUTION = b"".join(
    [
        text(1, "agentic.stigmer.ai/v1"),
        text(2, "AgentExecution"),
        msg(3, metadata_bytes(AGENT_ID)),
        msg(4, AGENT_SPEC),
        msg(5, AGENT_STATUS),
    ]
)


def check_agent_spec(spec: agent_spec.AgentExecutionSpec) -> None:
    assert spec.session_id == "ses-42"
    assert spec.agent_id == "agt-reporter"
    assert spec.message == "Summarise last night's runs"
    assert spec.execution_config.model_name == "claude-sonnet-4"
    check_runtime_env(spec.runtime_env)
    assert isinstance(spec.callback_token, bytes)
    assert spec.callback_token == AGENT_TOKEN


def check_agent_status(status: agent_status.AgentExecutionStatus) -> None:
    assert len(status.messages) == 2
    human, ai = status.messages
    assert human.type == agent_enum.MESSAGE_HUMAN
    assert human.content == "Summarise last night's runs"
    assert human.timestamp == "2026-01-01T00:00:00Z"
    assert len(human.tool_calls) == 0
    assert not human.HasField("metadata")
    assert ai.type == agent_enum.MESSAGE_AI
    assert ai.content == "Reading the report"
    assert ai.timestamp == "2026-01-01T00:00:01Z"
    assert len(ai.tool_calls) == 1
    check_tool_call(ai.tool_calls[0])
    assert as_dict(ai.metadata) == {"tokens": 42.0}

    assert status.phase == agent_enum.EXECUTION_CANCELLED
    assert len(status.tool_calls) == 1
    check_tool_call(status.tool_calls[0])

    assert len(status.sub_agent_executions) == 1
    sub = status.sub_agent_executions[0]
    assert sub.id == "sub-1"
    assert sub.name == "researcher"
    assert sub.input == "find the failures"
    assert sub.output == "two failures"
    assert sub.status == agent_enum.SUB_AGENT_COMPLETED
    assert sub.started_at == "2026-01-01T00:00:03Z"
    assert sub.completed_at == "2026-01-01T00:00:09Z"
    assert sub.error == "one source unreachable"
    assert as_dict(sub.metadata) == {"depth": 2.0}

    assert status.error == "cancelled by the operator"
    assert status.started_at == "2026-01-01T00:00:00.5Z"
    assert status.completed_at == "2026-01-01T00:00:10Z"

    assert sorted(status.todos) == ["todo-1", "todo-2"]
    first, second = status.todos["todo-1"], status.todos["todo-2"]
    assert (first.id, first.content, first.status) == (
        "todo-1",
        "collect runs",
        agent_enum.TODO_COMPLETED,
    )
    assert (first.created_at, first.updated_at) == ("2026-01-01T00:00:01Z", "2026-01-01T00:00:05Z")
    assert (second.id, second.content, second.status) == (
        "todo-2",
        "write summary",
        agent_enum.TODO_CANCELLED,
    )
    assert (second.created_at, second.updated_at) == (
        "2026-01-01T00:00:02Z",
        "2026-01-01T00:00:10Z",
    )

    check_audit(status.audit)


def test_agent_execution_parses_and_serializes_to_the_same_bytes() -> None:
    execution = agent_api.AgentExecution.FromString(AGENT_EXECUTION)

    assert execution.api_version == "agentic.stigmer.ai/v1"
    assert execution.kind == "AgentExecution"
    check_metadata(execution.metadata, AGENT_ID)
    check_agent_spec(execution.spec)
    check_agent_status(execution.status)

    assert_round_trip(execution, AGENT_EXECUTION)


@pytest.mark.parametrize(
    ("cls", "wire"),
    [
        (agent_spec.AgentExecutionSpec, AGENT_SPEC),
        (agent_status.AgentExecutionStatus, AGENT_STATUS),
        (agent_status.ToolCall, TOOL_CALL),
        (metadata_pb2.ApiResourceMetadata, metadata_bytes(AGENT_ID)),
        (audit_pb2.ApiResourceAudit, AUDIT),
    ],
    ids=message_param_id,
)
def test_agent_parts_round_trip_on_their_own(cls: type[Message], wire: bytes) -> None:
    message = cls.FromString(wire)
    assert message.ByteSize() == len(wire)
    assert_round_trip(message, wire)


def test_agent_enum_numbers_on_the_wire() -> None:
    for number, phase in [
        (1, agent_enum.EXECUTION_PENDING),
        (2, agent_enum.EXECUTION_IN_PROGRESS),
        (3, agent_enum.EXECUTION_COMPLETED),
        (4, agent_enum.EXECUTION_FAILED),
        (5, agent_enum.EXECUTION_CANCELLED),
    ]:
        status = agent_status.AgentExecutionStatus.FromString(uint(2, number))
        assert status.phase == phase
        assert status.SerializeToString() == uint(2, number)
    for number, kind in [
        (1, agent_enum.MESSAGE_HUMAN),
        (2, agent_enum.MESSAGE_AI),
        (3, agent_enum.MESSAGE_TOOL),
        (4, agent_enum.MESSAGE_SYSTEM),
    ]:
        assert agent_status.AgentMessage.FromString(uint(1, number)).type == kind
    for number, call_status in [
        (1, agent_enum.TOOL_CALL_PENDING),
        (2, agent_enum.TOOL_CALL_RUNNING),
        (3, agent_enum.TOOL_CALL_COMPLETED),
        (4, agent_enum.TOOL_CALL_FAILED),
    ]:
        assert agent_status.ToolCall.FromString(uint(5, number)).status == call_status
    for number, sub_status in [
        (1, agent_enum.SUB_AGENT_PENDING),
        (2, agent_enum.SUB_AGENT_IN_PROGRESS),
        (3, agent_enum.SUB_AGENT_COMPLETED),
        (4, agent_enum.SUB_AGENT_FAILED),
    ]:
        assert agent_status.SubAgentExecution.FromString(uint(5, number)).status == sub_status
    for number, todo_status in [
        (1, agent_enum.TODO_PENDING),
        (2, agent_enum.TODO_IN_PROGRESS),
        (3, agent_enum.TODO_COMPLETED),
        (4, agent_enum.TODO_CANCELLED),
    ]:
        assert agent_status.TodoItem.FromString(uint(3, number)).status == todo_status
    for number, scope in [
        (1, metadata_pb2.platform),
        (2, metadata_pb2.organization),
        (3, metadata_pb2.identity_account),
    ]:
        assert metadata_pb2.ApiResourceMetadata.FromString(uint(5, number)).owner_scope == scope


# ---------------------------------------------------------------------------
# WorkflowExecution
# ---------------------------------------------------------------------------

WORKFLOW_ID = "wex-01JH8Z7B2C3D4E5F6G7H8J9K0M"

# WorkflowTask: task_id 1, task_name 2, task_type 3, input 4, output 5,
# status 6, started_at 7, completed_at 8, error 9, metadata 10.
WORKFLOW_TASKS = [
    msg(
        2,
        text(1, "task-1"),
        text(2, "summarise"),
        uint(3, 1),  # WORKFLOW_TASK_AGENT_INVOCATION
        struct_field(4, {"agent": v_string("agt-reporter")}),
        struct_field(5, {"summary": v_string("ok"), "tokens": v_number(1234)}),
        uint(6, 3),  # WORKFLOW_TASK_COMPLETED
        text(7, "2026-01-01T00:00:01Z"),
        text(8, "2026-01-01T00:00:30Z"),
        struct_field(10, {"agent_execution_id": v_string(AGENT_ID)}),
    ),
    msg(
        2,
        text(1, "task-2"),
        text(2, "notify"),
        uint(3, 7),  # WORKFLOW_TASK_CUSTOM
        uint(6, 4),  # WORKFLOW_TASK_FAILED
        text(7, "2026-01-01T00:00:31Z"),
        text(8, "2026-01-01T00:00:32Z"),
        text(9, "webhook returned 500"),
    ),
]

WORKFLOW_SPEC = b"".join(
    [
        text(1, "wfi-nightly-prod"),
        text(3, "run the nightly report"),
        string_map(4, {"caller_id": "usr-alice", "source": "schedule"}),
        RUNTIME_ENV,
        text(6, "wf-nightly"),
        blob(7, WORKFLOW_TOKEN),
    ]
)

WORKFLOW_STATUS = b"".join(
    [
        uint(1, 4),  # phase = EXECUTION_FAILED
        *WORKFLOW_TASKS,  # tasks = 2
        struct_field(3, {"report": v_struct({"rows": v_number(7)}), "sent": v_bool(False)}),
        text(4, "task-2 failed"),
        text(5, "2026-01-01T00:00:00Z"),
        text(6, "2026-01-01T00:00:32Z"),
        text(7, "ledger/workflow-execution/" + WORKFLOW_ID),
        msg(99, AUDIT),
    ]
)

WORKFLOW_EXECUTION = b"".join(
    [
        text(1, "agentic.stigmer.ai/v1"),
        text(2, "WorkflowExecution"),
        msg(3, metadata_bytes(WORKFLOW_ID)),
        msg(4, WORKFLOW_SPEC),
        msg(5, WORKFLOW_STATUS),
    ]
)


def check_workflow_spec(spec: workflow_spec.WorkflowExecutionSpec) -> None:
    assert spec.workflow_instance_id == "wfi-nightly-prod"
    assert spec.trigger_message == "run the nightly report"
    assert dict(spec.trigger_metadata) == {"caller_id": "usr-alice", "source": "schedule"}
    check_runtime_env(spec.runtime_env)
    assert spec.workflow_id == "wf-nightly"
    assert isinstance(spec.callback_token, bytes)
    assert spec.callback_token == WORKFLOW_TOKEN


def check_workflow_status(status: workflow_status.WorkflowExecutionStatus) -> None:
    assert status.phase == workflow_enum.EXECUTION_FAILED
    assert len(status.tasks) == 2
    first, second = status.tasks

    assert first.task_id == "task-1"
    assert first.task_name == "summarise"
    assert first.task_type == workflow_enum.WORKFLOW_TASK_AGENT_INVOCATION
    assert as_dict(first.input) == {"agent": "agt-reporter"}
    assert as_dict(first.output) == {"summary": "ok", "tokens": 1234.0}
    assert first.status == workflow_enum.WORKFLOW_TASK_COMPLETED
    assert first.started_at == "2026-01-01T00:00:01Z"
    assert first.completed_at == "2026-01-01T00:00:30Z"
    assert first.error == ""
    assert as_dict(first.metadata) == {"agent_execution_id": AGENT_ID}

    assert second.task_id == "task-2"
    assert second.task_name == "notify"
    assert second.task_type == workflow_enum.WORKFLOW_TASK_CUSTOM
    assert not second.HasField("input")
    assert not second.HasField("output")
    assert second.status == workflow_enum.WORKFLOW_TASK_FAILED
    assert second.started_at == "2026-01-01T00:00:31Z"
    assert second.completed_at == "2026-01-01T00:00:32Z"
    assert second.error == "webhook returned 500"
    assert not second.HasField("metadata")

    assert as_dict(status.output) == {"report": {"rows": 7.0}, "sent": False}
    assert status.error == "task-2 failed"
    assert status.started_at == "2026-01-01T00:00:00Z"
    assert status.completed_at == "2026-01-01T00:00:32Z"
    assert status.temporal_workflow_id == "ledger/workflow-execution/" + WORKFLOW_ID
    check_audit(status.audit)


def test_workflow_execution_parses_and_serializes_to_the_same_bytes() -> None:
    execution = workflow_api.WorkflowExecution.FromString(WORKFLOW_EXECUTION)

    assert execution.api_version == "agentic.stigmer.ai/v1"
    assert execution.kind == "WorkflowExecution"
    check_metadata(execution.metadata, WORKFLOW_ID)
    check_workflow_spec(execution.spec)
    check_workflow_status(execution.status)

    assert_round_trip(execution, WORKFLOW_EXECUTION)


@pytest.mark.parametrize(
    ("cls", "wire"),
    [
        (workflow_spec.WorkflowExecutionSpec, WORKFLOW_SPEC),
        (workflow_status.WorkflowExecutionStatus, WORKFLOW_STATUS),
    ],
    ids=message_param_id,
)
def test_workflow_parts_round_trip_on_their_own(cls: type[Message], wire: bytes) -> None:
    message = cls.FromString(wire)
    assert message.ByteSize() == len(wire)
    assert_round_trip(message, wire)


def test_workflow_enum_numbers_on_the_wire() -> None:
    for number, phase in [
        (1, workflow_enum.EXECUTION_PENDING),
        (2, workflow_enum.EXECUTION_IN_PROGRESS),
        (3, workflow_enum.EXECUTION_COMPLETED),
        (4, workflow_enum.EXECUTION_FAILED),
        (5, workflow_enum.EXECUTION_CANCELLED),
    ]:
        status = workflow_status.WorkflowExecutionStatus.FromString(uint(1, number))
        assert status.phase == phase
        assert status.SerializeToString() == uint(1, number)
    for number, task_type in [
        (1, workflow_enum.WORKFLOW_TASK_AGENT_INVOCATION),
        (2, workflow_enum.WORKFLOW_TASK_APPROVAL),
        (3, workflow_enum.WORKFLOW_TASK_API_CALL),
        (4, workflow_enum.WORKFLOW_TASK_CONDITIONAL),
        (5, workflow_enum.WORKFLOW_TASK_PARALLEL),
        (6, workflow_enum.WORKFLOW_TASK_TRANSFORM),
        (7, workflow_enum.WORKFLOW_TASK_CUSTOM),
    ]:
        assert workflow_status.WorkflowTask.FromString(uint(3, number)).task_type == task_type
    for number, task_status in [
        (1, workflow_enum.WORKFLOW_TASK_PENDING),
        (2, workflow_enum.WORKFLOW_TASK_IN_PROGRESS),
        (3, workflow_enum.WORKFLOW_TASK_COMPLETED),
        (4, workflow_enum.WORKFLOW_TASK_FAILED),
        (5, workflow_enum.WORKFLOW_TASK_SKIPPED),
    ]:
        assert workflow_status.WorkflowTask.FromString(uint(6, number)).status == task_status


# ---------------------------------------------------------------------------
# Fields only the platform knows survive a pass through the ledger.
# ---------------------------------------------------------------------------


def test_fields_unknown_here_are_kept_verbatim() -> None:
    # The platform's status once carried the token as field 10 (reserved here);
    # its spec has more fields than ours (auto_approve_all = 7,
    # parent_workflow_id = 8). Unknown fields are kept and written back after
    # the known ones, so they are placed last here.
    legacy_token = b"\x00legacy-token\xff"
    spec_wire = AGENT_SPEC + flag(7, True) + text(8, "parent-wf")
    status_wire = AGENT_STATUS + blob(10, legacy_token)
    wire = b"".join(
        [
            text(1, "agentic.stigmer.ai/v1"),
            text(2, "AgentExecution"),
            msg(3, metadata_bytes(AGENT_ID)),
            msg(4, spec_wire),
            msg(5, status_wire),
        ]
    )

    execution = agent_api.AgentExecution.FromString(wire)

    check_agent_spec(execution.spec)
    check_agent_status(execution.status)
    assert "callback_token" not in execution.status.DESCRIPTOR.fields_by_name
    assert len(UnknownFieldSet(execution.spec)) == 2
    assert len(UnknownFieldSet(execution.status)) == 1
    assert execution.SerializeToString(deterministic=True) == wire
    # The ledger's own view of the status, without the legacy field, is what
    # the ledger alone writes.
    execution.status.DiscardUnknownFields()
    assert execution.status.SerializeToString(deterministic=True) == AGENT_STATUS


# ---------------------------------------------------------------------------
# The schema itself: names, numbers, types, reserved fields, enum values.
# ---------------------------------------------------------------------------

AE = "ledger.api.agentexecution.v1"
WE = "ledger.api.workflowexecution.v1"
CM = "ledger.api.commons.v1"
STRUCT = "google.protobuf.Struct"
TIMESTAMP = "google.protobuf.Timestamp"

EXPECTED_FIELDS: dict[str, dict[int, tuple[str, str]]] = {
    f"{CM}.ApiResourceMetadata": {
        1: ("name", "string"),
        2: ("slug", "string"),
        3: ("id", "string"),
        4: ("org", "string"),
        5: ("owner_scope", f"{CM}.ApiResourceOwnerScope"),
        6: ("labels", "map<string, string>"),
        7: ("annotations", "map<string, string>"),
        8: ("tags", "repeated string"),
        9: ("version", f"{CM}.ApiResourceMetadataVersion"),
    },
    f"{CM}.ApiResourceMetadataVersion": {
        1: ("id", "string"),
        2: ("message", "string"),
        3: ("previous_version_id", "string"),
    },
    f"{CM}.ExecutionValue": {1: ("value", "string"), 2: ("is_secret", "bool")},
    f"{CM}.ApiResourceAudit": {
        1: ("spec_audit", f"{CM}.ApiResourceAuditInfo"),
        2: ("status_audit", f"{CM}.ApiResourceAuditInfo"),
    },
    f"{CM}.ApiResourceAuditInfo": {
        1: ("created_by", f"{CM}.ApiResourceAuditActor"),
        2: ("created_at", TIMESTAMP),
        3: ("updated_by", f"{CM}.ApiResourceAuditActor"),
        4: ("updated_at", TIMESTAMP),
        5: ("event", "string"),
    },
    f"{CM}.ApiResourceAuditActor": {1: ("id", "string"), 2: ("avatar", "string")},
    f"{AE}.AgentExecution": {
        1: ("api_version", "string"),
        2: ("kind", "string"),
        3: ("metadata", f"{CM}.ApiResourceMetadata"),
        4: ("spec", f"{AE}.AgentExecutionSpec"),
        5: ("status", f"{AE}.AgentExecutionStatus"),
    },
    f"{AE}.AgentExecutionSpec": {
        1: ("session_id", "string"),
        2: ("agent_id", "string"),
        3: ("message", "string"),
        4: ("execution_config", f"{AE}.ExecutionConfig"),
        5: ("runtime_env", f"map<string, {CM}.ExecutionValue>"),
        6: ("callback_token", "bytes"),
    },
    f"{AE}.ExecutionConfig": {1: ("model_name", "string")},
    f"{AE}.AgentExecutionStatus": {
        1: ("messages", f"repeated {AE}.AgentMessage"),
        2: ("phase", f"{AE}.ExecutionPhase"),
        3: ("tool_calls", f"repeated {AE}.ToolCall"),
        4: ("sub_agent_executions", f"repeated {AE}.SubAgentExecution"),
        6: ("error", "string"),
        7: ("started_at", "string"),
        8: ("completed_at", "string"),
        9: ("todos", f"map<string, {AE}.TodoItem>"),
        99: ("audit", f"{CM}.ApiResourceAudit"),
        1000: ("output", STRUCT),  # The ledger's extension (1000-1999), see status.proto.
    },
    f"{AE}.AgentMessage": {
        1: ("type", f"{AE}.MessageType"),
        2: ("content", "string"),
        3: ("timestamp", "string"),
        4: ("tool_calls", f"repeated {AE}.ToolCall"),
        5: ("metadata", STRUCT),
    },
    f"{AE}.ToolCall": {
        1: ("id", "string"),
        2: ("name", "string"),
        3: ("args", STRUCT),
        4: ("result", "string"),
        5: ("status", f"{AE}.ToolCallStatus"),
        6: ("component_metadata", f"{AE}.ComponentMetadata"),
        7: ("started_at", "string"),
        8: ("completed_at", "string"),
        9: ("error", "string"),
    },
    f"{AE}.ComponentMetadata": {
        1: ("component_type", "string"),
        2: ("component_group", "string"),
        3: ("layout_hint", "string"),
        4: ("metadata", STRUCT),
    },
    f"{AE}.SubAgentExecution": {
        1: ("id", "string"),
        2: ("name", "string"),
        3: ("input", "string"),
        4: ("output", "string"),
        5: ("status", f"{AE}.SubAgentStatus"),
        6: ("started_at", "string"),
        7: ("completed_at", "string"),
        8: ("error", "string"),
        9: ("metadata", STRUCT),
    },
    f"{AE}.TodoItem": {
        1: ("id", "string"),
        2: ("content", "string"),
        3: ("status", f"{AE}.TodoStatus"),
        4: ("created_at", "string"),
        5: ("updated_at", "string"),
    },
    f"{WE}.WorkflowExecution": {
        1: ("api_version", "string"),
        2: ("kind", "string"),
        3: ("metadata", f"{CM}.ApiResourceMetadata"),
        4: ("spec", f"{WE}.WorkflowExecutionSpec"),
        5: ("status", f"{WE}.WorkflowExecutionStatus"),
    },
    f"{WE}.WorkflowExecutionSpec": {
        1: ("workflow_instance_id", "string"),
        3: ("trigger_message", "string"),
        4: ("trigger_metadata", "map<string, string>"),
        5: ("runtime_env", f"map<string, {CM}.ExecutionValue>"),
        6: ("workflow_id", "string"),
        7: ("callback_token", "bytes"),
    },
    f"{WE}.WorkflowExecutionStatus": {
        1: ("phase", f"{WE}.ExecutionPhase"),
        2: ("tasks", f"repeated {WE}.WorkflowTask"),
        3: ("output", STRUCT),
        4: ("error", "string"),
        5: ("started_at", "string"),
        6: ("completed_at", "string"),
        7: ("temporal_workflow_id", "string"),
        99: ("audit", f"{CM}.ApiResourceAudit"),
    },
    f"{WE}.WorkflowTask": {
        1: ("task_id", "string"),
        2: ("task_name", "string"),
        3: ("task_type", f"{WE}.WorkflowTaskType"),
        4: ("input", STRUCT),
        5: ("output", STRUCT),
        6: ("status", f"{WE}.WorkflowTaskStatus"),
        7: ("started_at", "string"),
        8: ("completed_at", "string"),
        9: ("error", "string"),
        10: ("metadata", STRUCT),
    },
}

SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
}


def field_type(field: FieldDescriptor) -> str:
    """The field's type as written in a .proto file."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        return f"map<{field_type(entry['key'])}, {field_type(entry['value'])}>"
    if field.message_type is not None:
        base = field.message_type.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        base = SCALARS[field.type]
    return f"repeated {base}" if field.is_repeated else base


def message_descriptor(full_name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


@pytest.mark.parametrize("full_name", sorted(EXPECTED_FIELDS))
def test_message_fields_match_the_contract(full_name: str) -> None:
    descriptor = message_descriptor(full_name)
    actual = {f.number: (f.name, field_type(f)) for f in descriptor.fields}
    assert actual == EXPECTED_FIELDS[full_name]


EXPECTED_RESERVED: dict[str, tuple[set[int], set[str]]] = {
    f"{AE}.AgentExecutionStatus": ({5, 10}, {"callback_token"}),
    f"{WE}.WorkflowExecutionSpec": ({2}, set()),
    f"{WE}.WorkflowExecutionStatus": ({11}, {"callback_token"}),
}


def reserved(descriptor: Descriptor) -> tuple[set[int], set[str]]:
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    numbers = {n for r in proto.reserved_range for n in range(r.start, r.end)}  # end exclusive
    return numbers, set(proto.reserved_name)


@pytest.mark.parametrize("full_name", sorted(EXPECTED_FIELDS))
def test_reserved_fields_are_declared_and_unused(full_name: str) -> None:
    assert set(EXPECTED_RESERVED) <= set(EXPECTED_FIELDS)
    descriptor = message_descriptor(full_name)
    numbers, names = reserved(descriptor)
    assert (numbers, names) == EXPECTED_RESERVED.get(full_name, (set(), set()))
    assert numbers.isdisjoint(descriptor.fields_by_number)
    assert names.isdisjoint(descriptor.fields_by_name)


def test_callback_token_is_an_input_only() -> None:
    holders = sorted(
        name
        for name in EXPECTED_FIELDS
        if "callback_token" in message_descriptor(name).fields_by_name
    )
    assert holders == [f"{AE}.AgentExecutionSpec", f"{WE}.WorkflowExecutionSpec"]


PHASES = {
    "EXECUTION_PHASE_UNSPECIFIED": 0,
    "EXECUTION_PENDING": 1,
    "EXECUTION_IN_PROGRESS": 2,
    "EXECUTION_COMPLETED": 3,
    "EXECUTION_FAILED": 4,
    "EXECUTION_CANCELLED": 5,
}

EXPECTED_ENUMS: dict[str, dict[str, int]] = {
    f"{CM}.ApiResourceOwnerScope": {
        "api_resource_owner_scope_unspecified": 0,
        "platform": 1,
        "organization": 2,
        "identity_account": 3,
    },
    f"{AE}.ExecutionPhase": PHASES,
    f"{AE}.MessageType": {
        "MESSAGE_TYPE_UNSPECIFIED": 0,
        "MESSAGE_HUMAN": 1,
        "MESSAGE_AI": 2,
        "MESSAGE_TOOL": 3,
        "MESSAGE_SYSTEM": 4,
    },
    f"{AE}.ToolCallStatus": {
        "TOOL_CALL_STATUS_UNSPECIFIED": 0,
        "TOOL_CALL_PENDING": 1,
        "TOOL_CALL_RUNNING": 2,
        "TOOL_CALL_COMPLETED": 3,
        "TOOL_CALL_FAILED": 4,
    },
    f"{AE}.SubAgentStatus": {
        "SUB_AGENT_STATUS_UNSPECIFIED": 0,
        "SUB_AGENT_PENDING": 1,
        "SUB_AGENT_IN_PROGRESS": 2,
        "SUB_AGENT_COMPLETED": 3,
        "SUB_AGENT_FAILED": 4,
    },
    f"{AE}.TodoStatus": {
        "TODO_STATUS_UNSPECIFIED": 0,
        "TODO_PENDING": 1,
        "TODO_IN_PROGRESS": 2,
        "TODO_COMPLETED": 3,
        "TODO_CANCELLED": 4,
    },
    f"{WE}.ExecutionPhase": PHASES,
    f"{WE}.WorkflowTaskType": {
        "WORKFLOW_TASK_TYPE_UNSPECIFIED": 0,
        "WORKFLOW_TASK_AGENT_INVOCATION": 1,
        "WORKFLOW_TASK_APPROVAL": 2,
        "WORKFLOW_TASK_API_CALL": 3,
        "WORKFLOW_TASK_CONDITIONAL": 4,
        "WORKFLOW_TASK_PARALLEL": 5,
        "WORKFLOW_TASK_TRANSFORM": 6,
        "WORKFLOW_TASK_CUSTOM": 7,
    },
    f"{WE}.WorkflowTaskStatus": {
        "WORKFLOW_TASK_STATUS_UNSPECIFIED": 0,
        "WORKFLOW_TASK_PENDING": 1,
        "WORKFLOW_TASK_IN_PROGRESS": 2,
        "WORKFLOW_TASK_COMPLETED": 3,
        "WORKFLOW_TASK_FAILED": 4,
        "WORKFLOW_TASK_SKIPPED": 5,
    },
}


def enum_descriptor(full_name: str) -> EnumDescriptor:
    return descriptor_pool.Default().FindEnumTypeByName(full_name)


@pytest.mark.parametrize("full_name", sorted(EXPECTED_ENUMS))
def test_enum_values_match_the_contract(full_name: str) -> None:
    values = {v.name: v.number for v in enum_descriptor(full_name).values}
    assert values == EXPECTED_ENUMS[full_name]


CONTRACT_MODULES: list[ModuleType] = [
    metadata_pb2,
    execution_value_pb2,
    audit_pb2,
    agent_api,
    agent_spec,
    agent_status,
    agent_enum,
    workflow_api,
    workflow_spec,
    workflow_status,
    workflow_enum,
]


def test_every_message_and_enum_of_the_contract_is_pinned_here() -> None:
    messages: set[str] = set()
    enums: set[str] = set()
    for module in CONTRACT_MODULES:
        file_descriptor = module.DESCRIPTOR
        assert file_descriptor.package in {AE, WE, CM}
        messages.update(m.full_name for m in file_descriptor.message_types_by_name.values())
        enums.update(e.full_name for e in file_descriptor.enum_types_by_name.values())
    assert messages == set(EXPECTED_FIELDS)
    assert enums == set(EXPECTED_ENUMS)


# ---------------------------------------------------------------------------
# Fields closed against the platform's generated stubs, and the ledger's extension.
# ---------------------------------------------------------------------------


def test_tool_call_component_metadata_is_field_6() -> None:
    wire = text(1, "call-1") + msg(
        6,
        text(1, "code"),
        text(2, "tools"),
        text(3, "panel"),
        struct_field(4, {"language": v_string("python")}),
    )
    call = agent_status.ToolCall.FromString(wire)
    assert call.component_metadata.component_type == "code"
    assert call.component_metadata.component_group == "tools"
    assert call.component_metadata.layout_hint == "panel"
    assert call.component_metadata.metadata["language"] == "python"
    assert_round_trip(call, wire)


def test_metadata_version_is_field_9() -> None:
    wire = text(3, "aex-1") + msg(9, text(1, "v2"), text(2, "renamed"), text(3, "v1"))
    metadata = metadata_pb2.ApiResourceMetadata.FromString(wire)
    assert metadata.version.id == "v2"
    assert metadata.version.message == "renamed"
    assert metadata.version.previous_version_id == "v1"
    assert_round_trip(metadata, wire)


def test_the_agent_output_extension_is_field_1000_and_platform_bytes_still_parse() -> None:
    platform = uint(2, 3) + text(8, "2026-12-03T10:00:00Z")  # No field of ours.
    status = agent_status.AgentExecutionStatus.FromString(platform)
    assert not status.HasField("output")
    assert_round_trip(status, platform)
    ours = platform + struct_field(1000, {"summary": v_string("done")})
    status = agent_status.AgentExecutionStatus.FromString(ours)
    assert status.output["summary"] == "done"
    assert_round_trip(status, ours)
