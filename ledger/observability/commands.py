"""A ledger's commands counted, timed and traced, from outside the application.

:func:`instrument_commands` wraps the command methods of one
:class:`~ledger.application.Ledger` instance (nothing changes in the class, nor in
other instances): each call counts in ``ledger_commands_total{command,result}`` and
``ledger_command_duration_seconds``, each event it appends in
``ledger_events_appended_total{type}``, and, while tracing is on, it becomes a span
``ledger.<command>`` whose parent is the caller's trace context recorded in the
execution (:mod:`~ledger.observability.tracing`), or else the current span.
``ledger serve`` instruments its ledger; an application instruments its own with
one call.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from ledger.observability.metrics import EVENTS_APPENDED, observe_command
from ledger.observability.tracing import context_from, enabled, tracer

COMMAND_NAMES = (
    "create",
    "update_status",
    "complete",
    "fail",
    "cancel",
    "record_cancel_request",
    "record_caller_gone",
    "update",
    "delete",
)
"""The ledger's commands (the ``command`` label's values)."""

_MARK = "_ledger_instrumented"


def instrument_commands(ledger: Any, *, tracer_provider: trace.TracerProvider | None = None) -> Any:
    """Counts, times and traces ``ledger``'s commands (once; again is a no-op).
    Returns ``ledger``. Spans go to ``tracer_provider`` when given, else to the
    process's (global) one while tracing is on."""
    if getattr(ledger, _MARK, False):
        return ledger
    own = tracer_provider.get_tracer("execution-ledger") if tracer_provider else None
    for name in COMMAND_NAMES:
        setattr(ledger, name, _instrumented(name, getattr(ledger, name), own))
    save = ledger.save

    @functools.wraps(save)
    def counted_save(*objs: Any, **kwargs: Any) -> Any:
        recordings = save(*objs, **kwargs)
        for recording in recordings:
            EVENTS_APPENDED.labels(type(recording.domain_event).__name__).inc()
        return recordings

    ledger.save = counted_save
    setattr(ledger, _MARK, True)
    return ledger


def _instrumented(
    command: str, method: Callable[..., Any], own: trace.Tracer | None
) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        start_ns = time.time_ns() if own is not None or enabled() else 0
        result = "ok"
        record: Any = None
        try:
            record = method(*args, **kwargs)
            return record
        except Exception as e:
            result = type(e).__name__
            raise
        finally:
            observe_command(command, result, time.perf_counter() - started)
            if start_ns:
                _span(own or tracer(), command, args, record, result, start_ns)

    return call


def _span(
    spans: trace.Tracer,
    command: str,
    args: tuple[Any, ...],
    record: Any,
    result: str,
    start_ns: int,
) -> None:
    """The command's span, made after the fact: its parent is only known from the
    execution's recorded annotations, which the command's answer holds."""
    resource = record.resource if record is not None else None
    if resource is None and args and hasattr(args[0], "metadata"):
        resource = args[0]  # create/update refused: the resource given.
    parent = context_from(resource.metadata.annotations) if resource is not None else None
    execution_id = (
        resource.metadata.id
        if resource is not None
        else (args[0] if args and isinstance(args[0], str) else "")
    )
    attributes: dict[str, Any] = {"ledger.command": command, "ledger.result": result}
    if execution_id:
        attributes["ledger.execution_id"] = execution_id
    if record is not None:
        attributes["ledger.version"] = int(record.version)
        attributes["ledger.phase"] = int(record.resource.status.phase)
    span = spans.start_span(
        f"ledger.{command}", context=parent, attributes=attributes, start_time=start_ns
    )
    if result != "ok":
        span.set_status(trace.Status(trace.StatusCode.ERROR, result))
    span.end()
