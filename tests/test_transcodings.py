"""The ledger's transcodings: the library's transcoder contract, bytes and protobuf.

The library's own JSONTranscoder test registers its custom transcodings
(``CustomType1AsDict``, ``CustomType2AsDict``, ``UUIDAsHex``); the cases a JSON
transcoder cannot meet (tuples and subclasses of builtins come back as their
base types) are asserted as that behaviour here rather than skipped.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import JSONTranscoder, Transcoder
from eventsourcing.tests.persistence import (
    CustomType1AsDict,
    CustomType2AsDict,
    Mydict,
    MyInt,
    MyList,
    MyStr,
    TranscoderTestCase,
)
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
    open_ledger,
)
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.api.agentexecution.v1 import spec_pb2 as agent_spec
from ledger.api.agentexecution.v1 import status_pb2 as agent_status
from ledger.api.commons.v1 import audit_pb2, metadata_pb2
from ledger.api.commons.v1.execution_value_pb2 import ExecutionValue
from ledger.api.workflowexecution.v1 import enum_pb2 as workflow_enum
from ledger.api.workflowexecution.v1 import status_pb2 as workflow_status
from ledger.store.transcodings import ledger_transcoder, message_classes

ROOT = Path(__file__).resolve().parent.parent
TOKEN = bytes(range(256)) * 2


class TestLedgerJSONTranscoder(TranscoderTestCase):
    def construct_transcoder(self) -> Transcoder:
        transcoder = ledger_transcoder()  # UUIDAsHex is among the library defaults it has
        transcoder.register(CustomType1AsDict())
        transcoder.register(CustomType2AsDict())
        return transcoder

    # The library's JSONTranscoder (which the ledger uses) turns tuples and subclasses
    # of built-in types into plain JSON types; its own test case says so too. These
    # overrides pin that behaviour down instead of the contract's typed round trip.

    def _round_trip(self, value: object) -> object:
        return self.transcoder.decode(self.transcoder.encode(value))

    def test_tuple(self) -> None:
        self.assertEqual(self._round_trip((1, "a", ())), [1, "a", []])

    def test_mixed(self) -> None:
        self.assertEqual(self._round_trip({"a": (1, {"b": (2,)})}), {"a": [1, {"b": [2]}]})

    def test_dict_subclass(self) -> None:
        value = self._round_trip(Mydict({"a": 1}))
        self.assertEqual((type(value), value), (dict, {"a": 1}))

    def test_list_subclass(self) -> None:
        value = self._round_trip(MyList([1]))
        self.assertEqual((type(value), value), (list, [1]))

    def test_str_subclass(self) -> None:
        value = self._round_trip(MyStr("a"))
        self.assertEqual((type(value), value), (str, "a"))

    def test_int_subclass(self) -> None:
        value = self._round_trip(MyInt(3))
        self.assertEqual((type(value), value), (int, 3))


del TranscoderTestCase  # not collected on its own


# Samples: one populated message of every class the ledger's events hold.


def struct(value: dict[str, Any]) -> Struct:
    result = Struct()
    result.update(value)
    return result


def samples() -> list[Message]:
    metadata = metadata_pb2.ApiResourceMetadata(
        name="run",
        slug="run",
        id="aex-01hzy",
        org="org-1",
        labels={"team": "a", "env": "prod"},
        annotations={"note": "ü 🐈"},
        tags=["x", "y"],
    )
    agent_spec_message = AgentExecutionSpec(
        session_id="s",
        agent_id="a",
        message="hello",
        execution_config=agent_spec.ExecutionConfig(model_name="m"),
        runtime_env={"KEY": ExecutionValue(value="secret", is_secret=True)},
        callback_token=TOKEN,
    )
    agent_status_message = AgentExecutionStatus(
        messages=[
            agent_status.AgentMessage(
                type=agent_enum.MESSAGE_AI, content="hi", metadata=struct({"k": [1, "2"]})
            )
        ],
        phase=agent_enum.EXECUTION_IN_PROGRESS,
        tool_calls=[
            agent_status.ToolCall(
                id="c1", args=struct({"q": {"deep": True}}), status=agent_enum.TOOL_CALL_RUNNING
            )
        ],
        sub_agent_executions=[agent_status.SubAgentExecution(id="s1", name="sub")],
        todos={"t": agent_status.TodoItem(id="t", content="do", status=agent_enum.TODO_PENDING)},
    )
    agent_status_message.audit.CopyFrom(
        audit_pb2.ApiResourceAudit(spec_audit=audit_pb2.ApiResourceAuditInfo(event="created"))
    )
    workflow_spec_message = WorkflowExecutionSpec(
        workflow_instance_id="wi",
        workflow_id="w",
        trigger_message="go",
        trigger_metadata={"a": "b"},
        callback_token=TOKEN,
    )
    workflow_status_message = WorkflowExecutionStatus(
        phase=workflow_enum.EXECUTION_COMPLETED,
        tasks=[
            workflow_status.WorkflowTask(
                task_id="t1",
                task_type=workflow_enum.WORKFLOW_TASK_APPROVAL,
                input=struct({"n": 1.5}),
                status=workflow_enum.WORKFLOW_TASK_SKIPPED,
            )
        ],
        output=struct({"result": None, "list": [True, False]}),
        temporal_workflow_id="twf",
    )
    return [
        metadata,
        struct({"a": 1, "b": {"c": ["d", 2.5, None, True]}}),
        agent_spec_message,
        agent_status_message,
        AgentExecution(
            api_version="agentic.stigmer.ai/v1",
            kind="AgentExecution",
            metadata=metadata,
            spec=agent_spec_message,
            status=agent_status_message,
        ),
        workflow_spec_message,
        workflow_status_message,
        WorkflowExecution(
            api_version="agentic.stigmer.ai/v1",
            kind="WorkflowExecution",
            metadata=metadata,
            spec=workflow_spec_message,
            status=workflow_status_message,
        ),
    ]


SAMPLES = samples()


def sample_id(message: Message) -> str:
    return type(message).DESCRIPTOR.full_name


@pytest.fixture
def transcoder() -> JSONTranscoder:
    return ledger_transcoder()


def test_every_message_class_in_events_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(message_classes())


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_protobuf_message_round_trips(transcoder: JSONTranscoder, message: Message) -> None:
    data = transcoder.encode(message)
    decoded = transcoder.decode(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert decoded.SerializeToString(deterministic=True) == message.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_protobuf_stored_form(transcoder: JSONTranscoder, message: Message) -> None:
    stored = json.loads(transcoder.encode(message))
    full_name = type(message).DESCRIPTOR.full_name
    assert stored == {
        "_type_": "pb:" + full_name,
        "_data_": base64.b64encode(message.SerializeToString(deterministic=True)).decode(),
    }
    if type(message) is not Struct:
        assert stored["_type_"].startswith("pb:ledger.api.")
    # The generated class alone decodes it, found by the stored name.
    descriptor = descriptor_pool.Default().FindMessageTypeByName(stored["_type_"][3:])
    generated = message_factory.GetMessageClass(descriptor)
    assert generated.FromString(base64.b64decode(stored["_data_"], validate=True)) == message


def test_messages_inside_containers_round_trip(transcoder: JSONTranscoder) -> None:
    value = {"spec": SAMPLES[2], "items": [SAMPLES[1], {"token": TOKEN}], "n": 1}
    assert transcoder.decode(transcoder.encode(value)) == value


def test_empty_message_round_trips(transcoder: JSONTranscoder) -> None:
    data = transcoder.encode(AgentExecutionSpec())
    assert json.loads(data) == {
        "_type_": "pb:ledger.api.agentexecution.v1.AgentExecutionSpec",
        "_data_": "",
    }
    assert transcoder.decode(data) == AgentExecutionSpec()


def test_maps_encode_deterministically(transcoder: JSONTranscoder) -> None:
    first = metadata_pb2.ApiResourceMetadata()
    second = metadata_pb2.ApiResourceMetadata()
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        first.labels[key] = "v"
    for key in reversed(keys):
        second.labels[key] = "v"
    assert transcoder.encode(first) == transcoder.encode(second)


@pytest.mark.parametrize(
    "value", [b"", b"\x00", bytes(range(256)), "🐈".encode(), b"=" * 7], ids=repr
)
def test_bytes_round_trip(transcoder: JSONTranscoder, value: bytes) -> None:
    data = transcoder.encode(value)
    assert json.loads(data) == {"_type_": "bytes_b64", "_data_": base64.b64encode(value).decode()}
    decoded = transcoder.decode(data)
    assert type(decoded) is bytes
    assert decoded == value


@pytest.mark.parametrize(
    "data",
    [
        b'{"_type_":"bytes_b64","_data_":"not base64!"}',
        b'{"_type_":"pb:ledger.api.agentexecution.v1.AgentExecutionSpec","_data_":"@@@"}',
        # Valid base64, but a truncated message (field 3, length 100, no payload).
        b'{"_type_":"pb:ledger.api.agentexecution.v1.AgentExecutionSpec","_data_":"GmQ="}',
    ],
)
def test_corrupt_stored_values_are_refused(transcoder: JSONTranscoder, data: bytes) -> None:
    with pytest.raises(ValueError, match="not"):
        transcoder.decode(data)


def test_stored_created_event_decodes_without_the_ledger(sqlite_url: str) -> None:
    app = open_ledger(sqlite_url)
    try:
        spec = AgentExecutionSpec(agent_id="a", message="hello", callback_token=TOKEN)
        execution_id = app.create(AgentExecution(spec=spec)).id
    finally:
        app.close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        ((topic, state),) = conn.execute(
            "SELECT topic, state FROM stored_events WHERE originator_id = ?", (execution_id,)
        ).fetchall()
    assert topic.endswith("Execution.Created")
    stored = json.loads(state)["spec"]
    assert stored["_type_"] == "pb:ledger.api.agentexecution.v1.AgentExecutionSpec"
    wire = base64.b64decode(stored["_data_"], validate=True)
    assert agent_spec.AgentExecutionSpec.FromString(wire) == spec

    # Anyone with the .proto files decodes it too (protoc, no Python of ours).
    grpc_tools = pytest.importorskip("grpc_tools")
    include = Path(grpc_tools.__file__).parent / "_proto"
    decoded = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{include}",
            "--decode=ledger.api.agentexecution.v1.AgentExecutionSpec",
            "ledger/api/agentexecution/v1/spec.proto",
        ],
        input=wire,
        capture_output=True,
        check=True,
        cwd=ROOT / "protos",
    ).stdout.decode()
    assert 'agent_id: "a"' in decoded
    assert 'message: "hello"' in decoded
    assert "callback_token:" in decoded
