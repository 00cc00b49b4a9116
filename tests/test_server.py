"""``ledger serve``: a real server process, real grpcio clients, both stores.

Each test starts ``python -m ledger serve`` on a free port (``--address
127.0.0.1:0``; the server prints the port it bound) as a subprocess and waits for
its health check, then calls it as the platform's runners do: generated stubs,
and requests built byte by byte with the platform's field numbers
(:mod:`tests.test_wire`'s encoder).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.api.agentexecution.v1 import api_pb2 as agent_api
from ledger.api.workflowexecution.v1 import api_pb2 as workflow_api
from ledger.grpc.agentexecution.v1 import command_pb2_grpc as agent_command
from ledger.grpc.agentexecution.v1 import io_pb2 as agent_io
from ledger.grpc.agentexecution.v1 import query_pb2_grpc as agent_query
from ledger.grpc.workflowexecution.v1 import command_pb2_grpc as workflow_command
from ledger.grpc.workflowexecution.v1 import io_pb2 as workflow_io
from ledger.grpc.workflowexecution.v1 import query_pb2_grpc as workflow_query
from ledger.server.auth import Role, add_token
from tests.test_wire import blob, msg, text, uint

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
"""Seconds a server gets to start and answer its health check (2 shared cores)."""

AGENT_COMMAND = "/ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController/"
AGENT_QUERY = "/ai.stigmer.agentic.agentexecution.v1.AgentExecutionQueryController/"
WORKFLOW_COMMAND = "/ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionCommandController/"


class Served:
    """A ``ledger serve`` subprocess and clients of it."""

    def __init__(self, url: str, tmp: Path, *, extra: tuple[str, ...] = ()) -> None:
        self.url = url
        self.tmp = tmp
        self.tokens = tmp / "tokens.txt"
        if not self.tokens.exists():
            self.writer = add_token(self.tokens, "runner", Role.WRITER)
            self.reader = add_token(self.tokens, "dashboard", Role.READER)
        self.extra = extra
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.channel: grpc.Channel | None = None

    def start(self) -> Served:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.lines = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger",
                "serve",
                "--url",
                self.url,
                "--address",
                "127.0.0.1:0",
                "--tokens",
                str(self.tokens),
                "--grace",
                "5",
                *self.extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        bound = threading.Event()
        stderr = self.proc.stderr
        assert stderr is not None

        def read() -> None:
            for line in stderr:
                self.lines.append(line)
                found = re.search(r"serving on [\d.]+:(\d+)", line)
                if found:
                    self.port = int(found[1])
                    bound.set()

        threading.Thread(target=read, daemon=True).start()
        if not bound.wait(START_TIMEOUT):
            self.kill()
            pytest.fail(f"ledger serve did not start: {''.join(self.lines)}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        health: Any = health_pb2_grpc.HealthStub(self._channel)
        answer = health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=START_TIMEOUT, wait_for_ready=True
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return self

    def metadata(self, token: str | None = None, *extra: tuple[str, str]) -> Any:
        return (("authorization", f"Bearer {token or self.writer}"), *extra)

    @property
    def _channel(self) -> grpc.Channel:
        assert self.channel is not None
        return self.channel

    @property
    def agent_command(self) -> agent_command.AgentExecutionCommandControllerStub:
        return agent_command.AgentExecutionCommandControllerStub(self._channel)

    @property
    def agent_query(self) -> agent_query.AgentExecutionQueryControllerStub:
        return agent_query.AgentExecutionQueryControllerStub(self._channel)

    @property
    def workflow_command(self) -> workflow_command.WorkflowExecutionCommandControllerStub:
        return workflow_command.WorkflowExecutionCommandControllerStub(self._channel)

    @property
    def workflow_query(self) -> workflow_query.WorkflowExecutionQueryControllerStub:
        return workflow_query.WorkflowExecutionQueryControllerStub(self._channel)

    def raw(self, method: str, request: bytes, token: str | None = None) -> bytes:
        """A unary call with hand-built request bytes; the answer's bytes."""
        assert self.channel is not None
        call: Any = self.channel.unary_unary(method)
        answer: bytes = call(request, metadata=self.metadata(token), timeout=30)
        return answer

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self.channel is not None:
            self.channel.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.channel is not None:
            self.channel.close()


@pytest.fixture
def served(store_url: str, tmp_path: Path) -> Iterator[Served]:
    server = Served(store_url, tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


def agent(agent_id: str = "agent-1", **labels: str) -> agent_api.AgentExecution:
    resource = agent_api.AgentExecution()
    resource.spec.agent_id = agent_id
    resource.spec.message = "Summarise the Q3 report"
    resource.metadata.labels.update(labels)
    return resource


def workflow(workflow_id: str = "wf-1") -> workflow_api.WorkflowExecution:
    resource = workflow_api.WorkflowExecution()
    resource.spec.workflow_id = workflow_id
    resource.spec.trigger_message = "go"
    return resource


def agent_patch(execution_id: str, phase: int) -> agent_io.AgentExecutionUpdateStatusInput:
    patch = agent_io.AgentExecutionUpdateStatusInput(execution_id=execution_id)
    patch.status.phase = phase  # type: ignore[assignment]
    return patch


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    error: Any = raised.value
    return error.code(), error.details()


# Commands and reads.


def test_create_get_update_status_both_kinds(served: Served) -> None:
    md = served.metadata()
    created, call = served.agent_command.create.with_call(agent(), metadata=md, timeout=30)
    execution_id = created.metadata.id
    assert execution_id.startswith("aex-")
    assert dict(call.trailing_metadata())["x-version"] == "1"
    assert created.status.audit.spec_audit.created_by.id == "runner"  # The token's name.

    running = served.agent_command.updateStatus(agent_patch(execution_id, 2), metadata=md)
    assert running.status.phase == 2 and running.status.started_at

    got, call = served.agent_query.get.with_call(
        agent_io.AgentExecutionId(value=execution_id), metadata=md
    )
    assert got == running
    assert dict(call.trailing_metadata())["x-version"] == "2"

    done = agent_patch(execution_id, 3)
    done.status.output.update({"summary": "ok"})
    final = served.agent_command.updateStatus(done, metadata=md)
    assert final.status.phase == 3 and dict(final.status.output) == {"summary": "ok"}

    # Idempotent create: the same id and spec answers the recorded execution.
    again = agent()
    again.metadata.id = "aex-fixed-1"
    first = served.agent_command.create(again, metadata=md)
    assert served.agent_command.create(again, metadata=md) == first

    wex = served.workflow_command.create(workflow(), metadata=md)
    patch = workflow_io.WorkflowExecutionUpdateStatusInput(execution_id=wex.metadata.id)
    patch.status.phase = 2  # type: ignore[assignment]
    patch.status.tasks.add(task_id="t1", task_name="fetch")
    updated = served.workflow_command.updateStatus(patch, metadata=md)
    assert [t.task_id for t in updated.status.tasks] == ["t1"]
    assert (
        served.workflow_query.get(
            workflow_io.WorkflowExecutionId(value=wex.metadata.id), metadata=md
        )
        == updated
    )


def test_every_error_code(served: Served) -> None:
    md = served.metadata()
    command, query = served.agent_command, served.agent_query
    created = command.create(agent(), metadata=md)
    execution_id = created.metadata.id

    # Validation: INVALID_ARGUMENT, with the typed error's message.
    invalid = agent_api.AgentExecution()
    invalid.spec.message = "no agent"
    code, details = code_of(command.create, invalid, metadata=md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "agent_id" in details
    assert code_of(query.get, agent_io.AgentExecutionId(value="nope"), metadata=md)[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # Unknown execution: NOT_FOUND.
    code, details = code_of(query.get, agent_io.AgentExecutionId(value="aex-none"), metadata=md)
    assert code == grpc.StatusCode.NOT_FOUND and details == "execution 'aex-none' does not exist"
    # Same id, different spec: ALREADY_EXISTS.
    other = agent("agent-2")
    other.metadata.id = execution_id
    assert code_of(command.create, other, metadata=md)[0] == grpc.StatusCode.ALREADY_EXISTS
    # Stale x-expected-version: ABORTED; a right one writes.
    stale = (*md, ("x-expected-version", "5"))
    code, details = code_of(command.updateStatus, agent_patch(execution_id, 2), metadata=stale)
    assert code == grpc.StatusCode.ABORTED and "version 1" in details
    right = (*md, ("x-expected-version", "1"))
    assert command.updateStatus(agent_patch(execution_id, 2), metadata=right).status.phase == 2
    bad = (*md, ("x-expected-version", "one"))
    code, _ = code_of(command.updateStatus, agent_patch(execution_id, 2), metadata=bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Backwards, then after a terminal phase: FAILED_PRECONDITION.
    code, _ = code_of(command.updateStatus, agent_patch(execution_id, 1), metadata=md)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    command.updateStatus(agent_patch(execution_id, 4), metadata=md)
    code, details = code_of(command.updateStatus, agent_patch(execution_id, 2), metadata=md)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "EXECUTION_FAILED" in details
    # Too large for the ledger's limits: gRPC refuses it before decoding.
    huge = agent_patch(execution_id, 2)
    huge.status.error = "x" * (2 * 1024 * 1024)
    assert code_of(command.updateStatus, huge, metadata=md)[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # A deadline already passed is honoured.
    code, _ = code_of(command.create, agent(), metadata=md, timeout=0.000001)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


# Interop: the platform's bytes.


def test_platform_bytes_accepted_and_unknown_fields_refused(served: Served) -> None:
    # AgentExecution: api_version 1, kind 2, metadata 3 (id 3, labels 6), spec 4
    # (agent_id 2, message 3, callback_token 6).
    create = (
        text(1, "agentic.stigmer.ai/v1")
        + text(2, "AgentExecution")
        + msg(3, text(1, "nightly"), text(3, "aex-bytes-1"), msg(6, text(1, "env"), text(2, "p")))
        + msg(4, text(2, "agent-7"), text(3, "hello"), blob(6, b"\x0a\x03tok"))
    )
    answer = agent_api.AgentExecution.FromString(served.raw(AGENT_COMMAND + "create", create))
    assert answer.metadata.id == "aex-bytes-1"
    assert answer.spec.agent_id == "agent-7" and answer.spec.callback_token == b"\x0a\x03tok"
    assert dict(answer.metadata.labels) == {"env": "p"}

    # updateStatus: execution_id 1, status 2 (phase 2, tool_calls 3 (id 1, name 2)).
    patch = text(1, "aex-bytes-1") + msg(2, uint(2, 2), msg(3, text(1, "c1"), text(2, "search")))
    answer = agent_api.AgentExecution.FromString(served.raw(AGENT_COMMAND + "updateStatus", patch))
    assert answer.status.phase == 2 and answer.status.tool_calls[0].name == "search"

    # The platform's old status.callback_token (field 10): refused, naming it.
    old = text(1, "aex-bytes-1") + msg(2, uint(2, 2), blob(10, b"token"))
    with pytest.raises(grpc.RpcError) as raised:
        served.raw(AGENT_COMMAND + "updateStatus", old)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 10" in error.details() and "token" not in error.details().split("field 10")[0]
    # WorkflowExecutionStatus field 11, likewise.
    wex = served.workflow_command.create(workflow(), metadata=served.metadata())
    old = text(1, wex.metadata.id) + msg(2, uint(1, 2), blob(11, b"token"))
    with pytest.raises(grpc.RpcError) as raised:
        served.raw(WORKFLOW_COMMAND + "updateStatus", old)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "field 11" in error.details()
    # Any other unknown field, anywhere: refused with its number; nothing written.
    unknown = text(1, "aex-bytes-1") + msg(2, uint(2, 2), msg(3, text(1, "c2"), uint(77, 1)))
    with pytest.raises(grpc.RpcError) as raised:
        served.raw(AGENT_COMMAND + "updateStatus", unknown)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "77" in error.details() and "tool_calls[0]" in error.details()
    got = served.agent_query.get(
        agent_io.AgentExecutionId(value="aex-bytes-1"), metadata=served.metadata()
    )
    assert [c.id for c in got.status.tool_calls] == ["c1"]
    assert served.raw(AGENT_QUERY + "get", text(1, "aex-bytes-1")) == got.SerializeToString()


# Authentication, health, reflection.


def test_auth_health_and_reflection(served: Served) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    command, query = served.agent_command, served.agent_query
    created = command.create(agent(), metadata=served.metadata())
    which = agent_io.AgentExecutionId(value=created.metadata.id)
    # No token, a wrong one, a malformed header: UNAUTHENTICATED, on queries and commands.
    for metadata in (
        (),
        (("authorization", "Bearer ldg_wrong"),),
        (("authorization", f"Basic {served.writer}"),),
    ):
        assert code_of(query.get, which, metadata=metadata)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(command.create, agent(), metadata=metadata)[0] == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    # A reader reads, without the callback token or secret values; commands are refused.
    secret = agent()
    secret.spec.callback_token = b"task-token"
    secret.spec.runtime_env["KEY"].value = "s3cr3t"
    secret.spec.runtime_env["KEY"].is_secret = True
    secret.spec.runtime_env["PLAIN"].value = "visible"
    recorded = command.create(secret, metadata=served.metadata())
    assert recorded.spec.callback_token == b"task-token"  # A writer (a runner) sees it all.
    assert recorded.spec.runtime_env["KEY"].value == "s3cr3t"
    reader = served.metadata(served.reader)
    seen = query.get(agent_io.AgentExecutionId(value=recorded.metadata.id), metadata=reader)
    assert seen.spec.callback_token == b""
    assert seen.spec.runtime_env["KEY"].value == ""
    assert seen.spec.runtime_env["PLAIN"].value == "visible"
    code, details = code_of(
        command.updateStatus, agent_patch(created.metadata.id, 2), metadata=reader
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "dashboard" in details
    assert code_of(command.create, agent(), metadata=reader)[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Health needs no token (probes carry none), for the server and each service.
    health: Any = health_pb2_grpc.HealthStub(served._channel)
    for service in ("", "ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # Reflection answers a reader: the services, and their files with the platform's names.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(served._channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = list(stub.ServerReflectionInfo(iter([ask]), metadata=reader, timeout=30))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController",
        "ai.stigmer.agentic.agentexecution.v1.AgentExecutionQueryController",
        "ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionCommandController",
        "ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionQueryController",
        "grpc.health.v1.Health",
    } <= names
    ask = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController"
    )
    answers = list(stub.ServerReflectionInfo(iter([ask]), metadata=reader, timeout=30))
    files = answers[0].file_descriptor_response.file_descriptor_proto
    assert any(b"updateStatus" in f for f in files)
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.ServerReflectionInfo(iter([ask]), timeout=30))
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
