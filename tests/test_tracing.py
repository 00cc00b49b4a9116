"""Traces: one trace from the caller's workflow, through its execution, to the callback.

A real caller (a Temporal worker with ``temporalio.contrib.opentelemetry``'s
``TracingInterceptor``, spans in the SDK's in-memory exporter) awaits an execution; a
runner moves it to IN_PROGRESS with the Python API (an instrumented ledger) and
completes it through ``ledger serve`` (a process of its own); ``ledger dispatcher
run`` (another) wakes the caller. Both processes write their spans to a file
(``LEDGER_TRACES_FILE``). The test reads every span and checks the chain: the caller's
``StartWorkflow`` (parent of ``RunWorkflow``, ``StartActivity`` and
``CompleteWorkflow``, as the interceptor nests them) -> ``RunActivity`` -> the
execution's commands (in-process and in the server) and the dispatcher's delivery,
all children of the caller's activity, all in one trace, and the caller's
``CompleteWorkflow`` after the delivery.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Worker

from ledger.application import open_ledger
from ledger.contract.errors import ExecutionNotFoundError
from ledger.contract.kinds import AGENT_EXECUTION, AgentExecutionStatus
from ledger.contract.phases import Phase
from ledger.observability.commands import instrument_commands
from ledger.observability.tracing import TRACEPARENT
from ledger.temporal.caller import ExecutionActivities, execution_id_for
from ledger.temporal.workflow import START_AGENT_EXECUTION
from tests.e2e_flows import AwaitAgentExecution
from tests.support.builders import agent_execution
from tests.support.processes import kill_all, python_process, stop_process
from tests.support.waiting import wait_for
from tests.test_server import Served, agent_patch

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    kill_all(started)


def _hex(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def _file_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _memory_span(span: Any) -> dict[str, Any]:
    """An in-memory span in the file exporter's JSON shape (the parts checked here)."""
    return {
        "name": span.name,
        "context": {
            "trace_id": _hex(span.context.trace_id, 32),
            "span_id": _hex(span.context.span_id, 16),
        },
        "parent_id": _hex(span.parent.span_id, 16) if span.parent is not None else None,
        "start_time": datetime.fromtimestamp(span.start_time / 1e9).isoformat(),
        "start_ns": span.start_time,
        "attributes": dict(span.attributes or {}),
    }


def _start_ns(span: dict[str, Any]) -> int:
    if "start_ns" in span:
        return int(span["start_ns"])
    moment = datetime.fromisoformat(span["start_time"].replace("Z", "+00:00"))
    return int(moment.timestamp() * 1e9)


def test_one_trace_from_the_caller_to_its_callback(
    pg_url: str,
    tmp_path: Path,
    temporal_address: str,
    monkeypatch: pytest.MonkeyPatch,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    serve_spans, dispatcher_spans = tmp_path / "serve.jsonl", tmp_path / "dispatcher.jsonl"

    monkeypatch.setenv("LEDGER_TRACES_FILE", str(serve_spans))
    served = Served(pg_url, tmp_path).start()
    monkeypatch.delenv("LEDGER_TRACES_FILE")
    try:
        processes.append(
            python_process(
                ["-m", "ledger", "dispatcher", "run"],
                {
                    "LEDGER_URL": pg_url,
                    "TEMPORAL_ADDRESS": temporal_address,
                    "LEDGER_TRACES_FILE": str(dispatcher_spans),
                },
                tmp_path / "dispatcher.log",
            )
        )

        async def scenario() -> str:
            client = await Client.connect(
                temporal_address, interceptors=[TracingInterceptor(provider.get_tracer("caller"))]
            )
            ledger = instrument_commands(open_ledger(pg_url), tracer_provider=provider)
            queue = f"q-{uuid.uuid4().hex}"
            workflow_id = f"wf-{uuid.uuid4().hex}"
            try:
                async with Worker(
                    client,
                    task_queue=queue,
                    workflows=[AwaitAgentExecution],
                    activities=ExecutionActivities(ledger).all(),
                ):
                    handle = await client.start_workflow(
                        AwaitAgentExecution.run, agent_execution(), id=workflow_id, task_queue=queue
                    )
                    assert handle.result_run_id is not None
                    execution_id = execution_id_for(
                        AGENT_EXECUTION, workflow_id, handle.result_run_id, "1", 1
                    )

                    def recorded() -> bool:
                        try:
                            ledger.read(execution_id)
                        except ExecutionNotFoundError:
                            return False
                        return True

                    await asyncio.to_thread(wait_for, recorded, message="the execution")
                    running = AgentExecutionStatus(phase=Phase.IN_PROGRESS)  # type: ignore[arg-type]
                    await asyncio.to_thread(ledger.update_status, execution_id, running)
                    done = agent_patch(execution_id, Phase.COMPLETED.value)
                    await asyncio.to_thread(
                        served.agent_command.updateStatus, done, metadata=served.metadata()
                    )
                    final = await asyncio.wait_for(handle.result(), 120)
                    assert final.status.phase == Phase.COMPLETED.value
                    recorded_context = ledger.get(execution_id).metadata.annotations
                    assert recorded_context[TRACEPARENT].startswith("00-")
            finally:
                ledger.close()
            return execution_id

        execution_id = asyncio.run(scenario())
        wait_for(
            lambda: any(s["name"] == "ledger.deliver" for s in _file_spans(dispatcher_spans)),
            message="the dispatcher's delivery span",
        )
        assert stop_process(processes[0]) == 0
    finally:
        served.terminate()

    caller = [_memory_span(s) for s in exporter.get_finished_spans()]
    server = _file_spans(serve_spans)
    dispatcher = _file_spans(dispatcher_spans)
    every = caller + server + dispatcher

    def one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
        found = [
            s
            for s in spans
            if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, [s["name"] for s in spans])
        return found[0]

    workflow = "AwaitAgentExecution"
    start = one(caller, f"StartWorkflow:{workflow}")
    run = one(caller, f"RunWorkflow:{workflow}")
    start_activity = one(caller, f"StartActivity:{START_AGENT_EXECUTION}")
    run_activity = one(caller, f"RunActivity:{START_AGENT_EXECUTION}")
    create = one(caller, "ledger.create", **{"ledger.execution_id": execution_id})
    progress = one(caller, "ledger.update_status", **{"ledger.execution_id": execution_id})
    completed = one(server, "ledger.update_status", **{"ledger.execution_id": execution_id})
    delivered = one(dispatcher, "ledger.deliver", **{"ledger.execution_id": execution_id})
    resumed = one(caller, f"CompleteWorkflow:{workflow}")

    trace_id = start["context"]["trace_id"]
    chain = [start, run, start_activity, run_activity, create, progress, completed]
    assert all(s["context"]["trace_id"] == trace_id for s in [*chain, delivered, resumed])
    assert start["parent_id"] is None
    assert run["parent_id"] == start["context"]["span_id"]
    # The TracingInterceptor parents the workflow's own spans on the client's start.
    for workflow_span in (run, start_activity, resumed):
        assert workflow_span["parent_id"] == start["context"]["span_id"]
    assert run_activity["parent_id"] == start_activity["context"]["span_id"]
    for child in (create, progress, completed, delivered):
        assert child["parent_id"] == run_activity["context"]["span_id"], child["name"]
    assert completed["attributes"]["ledger.phase"] == Phase.COMPLETED.value
    assert delivered["attributes"]["ledger.outcome"] == "delivered"
    assert _start_ns(delivered) >= _start_ns(completed) - 5_000_000_000  # clocks: one machine
    assert _start_ns(resumed) >= _start_ns(delivered)
    # No token in any span: the files hold neither the spec nor the token.
    for text in (serve_spans.read_text(), dispatcher_spans.read_text()):
        assert "callback_token" not in text
    assert len({s["context"]["trace_id"] for s in every if execution_id in json.dumps(s)}) == 1
