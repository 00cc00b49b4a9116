"""Unit tests of the observability helpers (in process; the processes' metrics and the
cross-process trace are in test_metrics.py and test_tracing.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from ledger.application import open_ledger
from ledger.contract.errors import ExecutionNotFoundError
from ledger.contract.kinds import AgentExecution, AgentExecutionSpec
from ledger.observability.commands import instrument_commands
from ledger.observability.exposition import MetricsServer, parse_address
from ledger.observability.tracing import TRACEPARENT, context_from, record_trace_context
from projections.metrics import _dead_letters
from tests.support.scraping import scrape, value


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("nowhere", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)


def test_instrumented_commands_count_results_events_and_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ledger = instrument_commands(open_ledger("memory://"), tracer_provider=provider)
    assert instrument_commands(ledger) is ledger  # Once only.
    created_before = _count("ledger_commands_total", command="create", result="ok")
    missing_before = _count(
        "ledger_commands_total", command="complete", result="ExecutionNotFoundError"
    )
    completed_before = _count("ledger_events_appended_total", type="Completed")

    caller = provider.get_tracer("caller")
    with caller.start_as_current_span("RunActivity") as activity:
        resource = AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))
        record_trace_context(resource.metadata.annotations)
        record = ledger.create(resource)
    ledger.complete(record.id, {"n": 1})  # Outside the span: parented by the annotation.
    with pytest.raises(ExecutionNotFoundError):
        ledger.complete("aex-missing")
    ledger.close()

    assert _count("ledger_commands_total", command="create", result="ok") == created_before + 1
    assert (
        _count("ledger_commands_total", command="complete", result="ExecutionNotFoundError")
        == missing_before + 1
    )
    assert _count("ledger_events_appended_total", type="Completed") == completed_before + 1
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("ledger.")}
    complete = next(
        s
        for s in exporter.get_finished_spans()
        if s.name == "ledger.complete" and dict(s.attributes or {})["ledger.result"] == "ok"
    )
    parent = activity.get_span_context()
    assert spans["ledger.create"].parent is not None
    assert spans["ledger.create"].parent.span_id == parent.span_id
    assert complete.parent is not None and complete.parent.span_id == parent.span_id
    assert complete.context.trace_id == parent.trace_id
    assert dict(complete.attributes or {})["ledger.execution_id"] == record.id


def test_trace_context_round_trip_and_nothing_without_a_span() -> None:
    annotations: dict[str, str] = {}
    record_trace_context(annotations)  # No span: nothing recorded.
    assert annotations == {}
    assert context_from({}) is None
    assert context_from({TRACEPARENT: "garbage"}) is None
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("s") as span:
        record_trace_context(annotations)
    context = context_from(annotations)
    assert context is not None
    restored = trace.get_current_span(context).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id


@dataclass
class _Letter:
    follower: str


class _ViewsWithDeadLetters:
    def dead_letters(self) -> list[_Letter]:
        return [_Letter("status<-Ledger"), _Letter("status<-Ledger"), _Letter("audit<-Ledger")]


def test_dead_letters_by_follower_where_the_views_keep_them() -> None:
    family = _dead_letters(_ViewsWithDeadLetters(), ["status<-Ledger", "dispatcher<-Ledger"])  # type: ignore[arg-type]
    assert family is not None
    counts = {s.labels["follower"]: s.value for s in family.samples}
    assert counts == {"status<-Ledger": 2, "audit<-Ledger": 1, "dispatcher<-Ledger": 0}
    assert _dead_letters(object(), ["status<-Ledger"]) is None  # type: ignore[arg-type]


def test_metrics_server_answers_metrics_and_404() -> None:
    server = MetricsServer("127.0.0.1:0", also=["http://127.0.0.1:1/metrics"])  # One is down.
    try:
        samples = scrape(server.port)
        assert value(samples, "python_info", **_python_info(samples)) == 1
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=10)
        assert refused.value.code == 404
    finally:
        server.close()


def _python_info(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, str]:
    labels = next(dict(labels) for name, labels in samples if name == "python_info")
    return labels
