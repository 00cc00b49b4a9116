"""Traces (OpenTelemetry): off unless configured, and then one trace per caller.

:func:`configure_tracing` sets up the process's tracer provider from the
environment: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) exports
over OTLP when ``opentelemetry-exporter-otlp`` is installed; ``LEDGER_TRACES_FILE``
appends every span as a line of JSON to a file. With neither, nothing is set up:
OpenTelemetry's API stays a no-op and :func:`enabled` is False, so instrumented
code skips the work of building spans.

The caller's trace context (W3C ``traceparent`` / ``tracestate``, as
``temporalio.contrib.opentelemetry`` propagates it) is recorded at create in the
execution's ledger-owned annotations (:data:`TRACEPARENT`, :data:`TRACESTATE`;
an update never changes them), so every later span about the execution (its
commands, in whatever process; its delivery, in the dispatcher) is a child of the
caller's activity: one trace from the caller's workflow to the callback that wakes it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

TRACEPARENT = "execution-ledger/traceparent"
"""The annotation holding the caller's W3C ``traceparent`` (recorded at create)."""
TRACESTATE = "execution-ledger/tracestate"
"""The annotation holding the caller's W3C ``tracestate``, when it has one."""
TRACES_FILE = "LEDGER_TRACES_FILE"
"""The variable naming a file that receives every span as a line of JSON."""

_PROPAGATOR = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"enabled": False, "provider": None}
"""Whether spans are recorded, and the tracer provider :func:`enabled` last found
not to be an SDK one (asked again only when the global provider changes)."""


def tracer() -> trace.Tracer:
    """The ledger's tracer (the global provider's; a no-op until one is set)."""
    return trace.get_tracer("execution-ledger")


def enabled() -> bool:
    """Whether spans are recorded in this process: :func:`configure_tracing` set up an
    exporter, or the application set an SDK tracer provider of its own."""
    if _state["enabled"]:
        return True
    provider = trace.get_tracer_provider()
    if provider is _state["provider"]:  # Asked once a command or delivery: cheap.
        return False
    from opentelemetry.sdk.trace import TracerProvider

    _state["enabled"] = isinstance(provider, TracerProvider)
    _state["provider"] = provider
    return bool(_state["enabled"])


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Sets up this process's tracer provider from ``env`` (default the environment);
    returns whether tracing is on. Does nothing when the process already has one."""
    env = os.environ if env is None else env
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    path = env.get(TRACES_FILE)
    if not endpoint and not path:
        return enabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if path:
        out: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - the process's life
        provider.add_span_processor(
            SimpleSpanProcessor(
                ConsoleSpanExporter(
                    out=out, formatter=lambda span: span.to_json(indent=None) + "\n"
                )
            )
        )
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            logger.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp is not "
                "installed: spans are not exported there"
            )
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _state["enabled"] = True
    return True


def shutdown_tracing() -> None:
    """Flushes and ends the provider set up here (spans still buffered are exported)."""
    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def record_trace_context(annotations: MutableMapping[str, str]) -> None:
    """Puts the current trace context in ``annotations`` (:data:`TRACEPARENT`,
    :data:`TRACESTATE`); nothing when there is no recording span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if "traceparent" in carrier:
        annotations[TRACEPARENT] = carrier["traceparent"]
        if carrier.get("tracestate"):
            annotations[TRACESTATE] = carrier["tracestate"]


def context_from(annotations: Mapping[str, str]) -> otel_context.Context | None:
    """The trace context recorded in an execution's annotations, or None."""
    parent = annotations.get(TRACEPARENT)
    if not parent:
        return None
    return _parsed(parent, annotations.get(TRACESTATE) or "")


@functools.lru_cache(maxsize=4096)
def _parsed(parent: str, state: str) -> otel_context.Context | None:
    """A recorded context, parsed once (an execution's commands share it; contexts
    are immutable)."""
    carrier = {"traceparent": parent}
    if state:
        carrier["tracestate"] = state
    extracted = _PROPAGATOR.extract(carrier)
    span_context = trace.get_current_span(extracted).get_span_context()
    return extracted if span_context.is_valid else None
