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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.api.agentexecution.v1 import api_pb2 as agent_api
from ledger.api.workflowexecution.v1 import api_pb2 as workflow_api
from ledger.cli.grpc_server.auth import Role, add_token
from ledger.grpc.agentexecution.v1 import command_pb2_grpc as agent_command
from ledger.grpc.agentexecution.v1 import io_pb2 as agent_io
from ledger.grpc.agentexecution.v1 import query_pb2_grpc as agent_query
from ledger.grpc.workflowexecution.v1 import command_pb2_grpc as workflow_command
from ledger.grpc.workflowexecution.v1 import io_pb2 as workflow_io
from ledger.grpc.workflowexecution.v1 import query_pb2_grpc as workflow_query
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
        self.credentials: grpc.ChannelCredentials | None = None
        """TLS: the client's credentials (None: in the clear)."""

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
        target = f"127.0.0.1:{self.port}"
        if self.credentials is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(target, self.credentials)
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


# Listing.


def _until(check: Any, timeout: float = 60.0) -> Any:
    """Polls ``check()`` until it returns something true (the status view lags a bit)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_list_filters_pages_and_cursors(served: Served) -> None:
    md = served.metadata()
    command, query = served.agent_command, served.agent_query
    ids = []
    for labels in (
        {"env": "prod", "team": "a"},
        {"env": "prod", "team": "a"},
        {"env": "prod"},
        {"env": "dev"},
        {"env": "dev", "team": "b"},
    ):
        ids.append(command.create(agent(**labels), metadata=md).metadata.id)
    for execution_id in ids[:2]:
        command.updateStatus(agent_patch(execution_id, 2), metadata=md)
    session = agent()
    session.spec.session_id = "session-1"
    in_session = [command.create(session, metadata=md).metadata.id for _ in range(2)]
    wf = [
        served.workflow_command.create(workflow("wf-9"), metadata=md).metadata.id for _ in range(2)
    ]
    served.workflow_command.create(workflow("wf-other"), metadata=md)

    def listed(**request: Any) -> tuple[list[str], int, str | None]:
        answer, call = query.list.with_call(
            agent_io.ListAgentExecutionsRequest(**request), metadata=md, timeout=30
        )
        token = dict(call.trailing_metadata()).get("x-next-page-token")
        assert token is None or isinstance(token, str)
        return [e.metadata.id for e in answer.entries], answer.total_pages, token

    everything = _until(lambda: len(listed(page_size=100)[0]) == 7 and listed(page_size=100))
    assert everything, "the status view did not catch up"
    newest_first = [*reversed(ids), *reversed(in_session)]
    assert sorted(everything[0]) == sorted(newest_first)
    assert _until(lambda: set(listed(phase=2)[0]) == set(ids[:2]))
    assert set(listed(tags=["env=prod"])[0]) == set(ids[:3])
    assert set(listed(tags=["env=prod", "team"])[0]) == set(ids[:2])
    assert set(listed(tags=["team"])[0]) == {ids[0], ids[1], ids[4]}
    assert listed(tags=["env=prod", "team=b"])[0] == []
    assert listed(tags=["env=dev"], phase=2)[0] == []
    # Pages of 3: numbers in text, and the cursor of trailing metadata.
    page1, total, token = listed(page_size=3)
    assert total == 3 and len(page1) == 3 and token
    page2, _, token2 = listed(page_size=3, page_token=token)
    assert listed(page_size=3, page_token="2")[0] == page2
    page3, _, token3 = listed(page_size=3, page_token=token2)
    assert len(page3) == 1 and token3 is None
    assert page1 + page2 + page3 == everything[0]
    assert listed(page_size=3, page_token="9")[0] == []
    _, total, _ = listed(page_size=2, tags=["env=prod"])
    assert total == 2
    assert (
        code_of(query.list, agent_io.ListAgentExecutionsRequest(page_token="garbage"), metadata=md)[
            0
        ]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # By session, by workflow.
    by_session = query.listBySession(
        agent_io.ListAgentExecutionsBySessionRequest(session_id="session-1"), metadata=md
    )
    assert sorted(e.metadata.id for e in by_session.entries) == sorted(in_session)
    assert by_session.total_pages == 1

    def by_workflow() -> list[str]:
        answer = served.workflow_query.listByWorkflow(
            workflow_io.ListWorkflowExecutionsByWorkflowRequest(workflow_id="wf-9"), metadata=md
        )
        return sorted(e.metadata.id for e in answer.entries)

    assert _until(lambda: by_workflow() == sorted(wf))
    # A reader lists too, without secrets.
    reader = served.metadata(served.reader)
    answer = query.list(agent_io.ListAgentExecutionsRequest(), metadata=reader)
    assert len(answer.entries) == 7


# Subscriptions.


class Subscriber(threading.Thread):
    """Reads one subscription to its end, optionally slowly; records what it saw."""

    def __init__(
        self, served: Served, execution_id: str, *, delay: float = 0.0, after: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.execution_id = execution_id
        self.delay = delay
        self.after = after
        self.versions: list[int] = []
        self.seen: list[agent_api.AgentExecution] = []
        self.error: grpc.StatusCode | None = None
        self.started_reading = threading.Event()

    def run(self) -> None:
        extra = () if self.after is None else (("x-from-version", str(self.after)),)
        stream: Any = self.served.agent_query.subscribe(
            agent_io.AgentExecutionId(value=self.execution_id),
            metadata=self.served.metadata(None, *extra),
            timeout=120,
        )
        try:
            first = int(dict(stream.initial_metadata()).get("x-version", 0))
            self.started_reading.set()
            for resource in stream:
                self.versions.append(first + len(self.seen))
                self.seen.append(resource)
                if self.delay:
                    time.sleep(self.delay)
        except grpc.RpcError as e:
            self.error = e.code()
        finally:
            self.started_reading.set()


def _write_progress(served: Served, ids: list[str], rounds: int, start: int = 0) -> None:
    for step in range(start, start + rounds):
        for execution_id in ids:
            patch = agent_patch(execution_id, 2)
            patch.status.messages.add(content=f"{execution_id} step {step}")
            served.agent_command.updateStatus(patch, metadata=served.metadata(), timeout=30)


def test_subscribe_concurrent_slow_and_resumed(store_url: str, tmp_path: Path) -> None:
    served = Served(store_url, tmp_path).start()
    try:
        md = served.metadata()
        ids = [served.agent_command.create(agent(), metadata=md).metadata.id for _ in range(3)]
        subscribers = [Subscriber(served, i) for i in ids] + [
            Subscriber(served, i, delay=0.05) for i in ids
        ]
        for subscriber in subscribers:
            subscriber.start()
        for subscriber in subscribers:
            assert subscriber.started_reading.wait(60)
        rounds = 8
        _write_progress(served, ids, rounds)
        for execution_id in ids:
            served.agent_command.updateStatus(agent_patch(execution_id, 3), metadata=md)
        for subscriber in subscribers:
            subscriber.join(120)
            assert not subscriber.is_alive() and subscriber.error is None
            # Exactly its own execution's versions, in order: created, each step, completed.
            assert subscriber.versions == list(range(1, rounds + 3))
            assert {r.metadata.id for r in subscriber.seen} == {subscriber.execution_id}
            assert [len(r.status.messages) for r in subscriber.seen] == [
                *range(rounds + 1),
                rounds,
            ]
            assert [r.status.phase for r in subscriber.seen][-1] == 3
            assert subscriber.seen[-1].status.messages[-1].content.endswith(f"step {rounds - 1}")

        # A stream open when the server stops ends UNAVAILABLE; a restarted server resumes
        # it from x-from-version with no gap and no repeat.
        open_id = served.agent_command.create(agent(), metadata=md).metadata.id
        _write_progress(served, [open_id], 2)  # Versions 2 and 3.
        watching = Subscriber(served, open_id)
        watching.start()
        assert watching.started_reading.wait(60)
        assert _until(lambda: len(watching.seen) == 1)
        assert served.terminate() == 0
        watching.join(60)
        assert watching.error == grpc.StatusCode.UNAVAILABLE
        assert watching.versions == [3]
        served.start()
        _write_progress(served, [open_id], 2, start=2)  # Versions 4 and 5.
        resumed = Subscriber(served, open_id, after=watching.versions[-1])
        resumed.start()
        assert resumed.started_reading.wait(60)
        served.agent_command.updateStatus(agent_patch(open_id, 5), metadata=md)  # Version 6.
        resumed.join(60)
        assert resumed.error is None and resumed.versions == [4, 5, 6]
        assert [len(r.status.messages) for r in resumed.seen] == [3, 4, 4]
        assert resumed.seen[-1].status.phase == 5
        # Resuming at the end of a finished execution: nothing more, the stream ends.
        done = Subscriber(served, open_id, after=6)
        done.start()
        done.join(60)
        assert done.error is None and done.versions == []
        # Past the end: OUT_OF_RANGE; unknown: NOT_FOUND.
        late = Subscriber(served, open_id, after=9)
        late.start()
        late.join(60)
        assert late.error == grpc.StatusCode.OUT_OF_RANGE
        missing = Subscriber(served, "aex-missing")
        missing.start()
        missing.join(60)
        assert missing.error == grpc.StatusCode.NOT_FOUND
    finally:
        served.kill()


# update and delete.


def test_update_metadata_and_delete(served: Served) -> None:
    md = served.metadata()
    command, query = served.agent_command, served.agent_query
    created = command.create(agent(env="dev"), metadata=md)
    execution_id = created.metadata.id
    which = agent_io.AgentExecutionId(value=execution_id)
    # update: labels, annotations and tags change; the spec may be left out.
    change = agent_api.AgentExecution()
    change.metadata.id = execution_id
    change.metadata.labels.update({"env": "prod", "team": "a"})
    change.metadata.annotations["note"] = "moved"
    change.metadata.tags.append("urgent")
    updated, call = command.update.with_call(change, metadata=md)
    assert dict(updated.metadata.labels) == {"env": "prod", "team": "a"}
    assert list(updated.metadata.tags) == ["urgent"]
    assert dict(call.trailing_metadata())["x-version"] == "2"
    assert updated.spec == created.spec
    # The same again: nothing new is recorded.
    _, call = command.update.with_call(change, metadata=md)
    assert dict(call.trailing_metadata())["x-version"] == "2"
    # A changed spec, or another metadata field: FAILED_PRECONDITION; a status: INVALID_ARGUMENT.
    changed = agent_api.AgentExecution()
    changed.CopyFrom(updated)
    changed.ClearField("status")
    changed.spec.message = "something else"
    code, details = code_of(command.update, changed, metadata=md)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "spec cannot change" in details
    renamed = agent_api.AgentExecution()
    renamed.metadata.id = execution_id
    renamed.metadata.name = "new name"
    assert code_of(command.update, renamed, metadata=md)[0] == (grpc.StatusCode.FAILED_PRECONDITION)
    assert code_of(command.update, updated, metadata=md)[0] == grpc.StatusCode.INVALID_ARGUMENT
    stale = (*md, ("x-expected-version", "1"))
    assert code_of(command.update, change, metadata=stale)[0] == grpc.StatusCode.ABORTED

    # Listing: the status view follows update's labels (and its label index), so the
    # execution is found by a label the update added and no longer by one it changed.
    def tagged(tag: str) -> list[str]:
        request = agent_io.ListAgentExecutionsRequest(tags=[tag])
        return [e.metadata.id for e in query.list(request, metadata=md).entries]

    assert _until(lambda: tagged("team=a") == [execution_id]), tagged("team=a")
    assert tagged("env=prod") == [execution_id]
    assert tagged("env=dev") == []

    # delete: an open execution is cancelled first; then get, subscribe, list, writes
    # answer NOT_FOUND or leave it out. The secret value is shredded.
    secret = agent()
    secret.spec.runtime_env["KEY"].value = "s3cr3t"
    secret.spec.runtime_env["KEY"].is_secret = True
    doomed = command.create(secret, metadata=md).metadata.id
    assert _until(
        lambda: (
            doomed
            in [
                e.metadata.id
                for e in query.list(agent_io.ListAgentExecutionsRequest(), metadata=md).entries
            ]
        )
    )
    from ledger.grpc.commons.apiresource import io_pb2 as resource_io

    gone = command.delete(resource_io.ApiResourceId(value=doomed), metadata=md)
    assert gone.status.phase == 5  # CANCELLED
    assert gone.spec.runtime_env["KEY"].value != "s3cr3t"
    code, details = code_of(query.get, agent_io.AgentExecutionId(value=doomed), metadata=md)
    assert code == grpc.StatusCode.NOT_FOUND and "deleted" in details
    code, _ = code_of(command.updateStatus, agent_patch(doomed, 2), metadata=md)
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(command.delete, resource_io.ApiResourceId(value=doomed), metadata=md)
    assert code == grpc.StatusCode.NOT_FOUND
    listed = query.list(agent_io.ListAgentExecutionsRequest(), metadata=md).entries
    assert doomed not in [e.metadata.id for e in listed]
    subscriber = Subscriber(served, doomed)
    subscriber.start()
    subscriber.join(60)
    assert subscriber.error == grpc.StatusCode.NOT_FOUND
    # The history is kept, in the store.
    from ledger.application import open_ledger

    ledger = open_ledger(served.url)
    try:
        assert [e.type for e in ledger.history(doomed)] == ["Created", "Completed", "Deleted"]
    finally:
        ledger.close()
    # A terminal execution is deleted as it is; a workflow likewise.
    assert query.get(which, metadata=md).status.phase == 1
    wex = served.workflow_command.create(workflow(), metadata=md).metadata.id
    patch = workflow_io.WorkflowExecutionUpdateStatusInput(execution_id=wex)
    patch.status.phase = 3  # type: ignore[assignment]
    served.workflow_command.updateStatus(patch, metadata=md)
    deleted = served.workflow_command.delete(resource_io.ApiResourceId(value=wex), metadata=md)
    assert deleted.status.phase == 3
    # Another kind's id through this kind's service: INVALID_ARGUMENT.
    code, _ = code_of(command.delete, resource_io.ApiResourceId(value=wex), metadata=md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# TLS.


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(tmp: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp)  # fmt: skip
    (tmp / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
                 "-out", f"{name}.pem", cwd=tmp)  # fmt: skip


def test_mutual_tls(sqlite_url: str, tmp_path: Path) -> None:
    _certificates(tmp_path)
    served = Served(
        sqlite_url,
        tmp_path,
        extra=(
            "--tls-cert",
            str(tmp_path / "server.pem"),
            "--tls-key",
            str(tmp_path / "server.key"),
            "--tls-client-ca",
            str(tmp_path / "ca.pem"),
        ),
    )
    ca = (tmp_path / "ca.pem").read_bytes()
    client = grpc.ssl_channel_credentials(
        ca, (tmp_path / "client.key").read_bytes(), (tmp_path / "client.pem").read_bytes()
    )
    served.credentials = client
    served.start()
    try:
        created = served.agent_command.create(agent(), metadata=served.metadata(), timeout=30)
        assert created.metadata.id.startswith("aex-")
        # Without a client certificate, or in the clear: no connection.
        for channel in (
            grpc.secure_channel(f"127.0.0.1:{served.port}", grpc.ssl_channel_credentials(ca)),
            grpc.insecure_channel(f"127.0.0.1:{served.port}"),
        ):
            stub = agent_query.AgentExecutionQueryControllerStub(channel)
            code, _ = code_of(
                stub.get,
                agent_io.AgentExecutionId(value=created.metadata.id),
                metadata=served.metadata(),
                timeout=10,
            )
            assert code == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        served.kill()


def test_list_of_a_stale_status_view_is_unavailable_until_rebuilt(tmp_path: Path) -> None:
    # The ledger and views files of the previous version (status view schema 1).
    schema1 = Path(__file__).parent / "data" / "views_schema1"
    for name in ("ledger.db", "ledger.dispatcher.db", "ledger.views.db"):
        (tmp_path / name).write_bytes((schema1 / name).read_bytes())
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    request = agent_io.ListAgentExecutionsRequest()
    served = Served(url, tmp_path, extra=("--no-views",)).start()
    try:
        md = served.metadata()
        code, details = code_of(served.agent_query.list, request, metadata=md, timeout=30)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "status view is stale" in details and "ledger projections rebuild status" in details
        which = agent_io.AgentExecutionId(value="aex-legacy-completed")
        assert served.agent_query.get(which, metadata=md, timeout=30).status.phase == 3
    finally:
        served.kill()
    # Following the views (the default), the server rebuilds the stale view first.
    (tmp_path / "second").mkdir()
    served = Served(url, tmp_path / "second").start()
    try:
        md = served.metadata()

        def listed() -> set[str]:
            try:
                page = served.agent_query.list(request, metadata=md, timeout=30)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return set()
            return {entry.metadata.id for entry in page.entries}

        assert _until(listed) == {"aex-legacy-completed", "aex-legacy-open"}
    finally:
        served.kill()
