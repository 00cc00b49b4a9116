"""The gRPC server's request metrics, as go-grpc-prometheus names them.

:class:`MetricsInterceptor` (the first interceptor of ``ledger serve``, so refused
calls count too) counts every call started (``grpc_server_started_total``), every
call handled by its status code (``grpc_server_handled_total``) and times it
(``grpc_server_handling_seconds``), labelled by service and method (a fixed set:
the services' own). Calls with a request stream (reflection) and streams written
with ``context.write`` (health's ``Watch``) pass through uncounted.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter, Histogram

STARTED = Counter(
    "grpc_server_started",
    "gRPC calls started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
HANDLED = Counter(
    "grpc_server_handled",
    "gRPC calls completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from a call's start to its end on the server (a stream's whole life).",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)

Context = aio.ServicerContext[Any, Any]


def _code_name(context: Context, error: BaseException | None) -> str:
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "OK" if error is None else "UNKNOWN"


class _Call:
    def __init__(self, kind: str, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.labels = (kind, service, name)
        STARTED.labels(*self.labels).inc()
        self.started = time.perf_counter()

    def end(self, context: Context, error: BaseException | None) -> None:
        HANDLED.labels(*self.labels, _code_name(context, error)).inc()
        HANDLING.labels(*self.labels).observe(time.perf_counter() - self.started)


class MetricsInterceptor(aio.ServerInterceptor):
    """Counts and times every unary-request call by service, method and status code."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        if handler.response_streaming:
            stream: Any = handler.unary_stream
            if not inspect.isasyncgenfunction(stream):
                return handler  # Writes with context.write (health's Watch): uncounted.

            async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
                call = _Call("server_stream", method)
                error: BaseException | None = None
                try:
                    async for answer in stream(request, context):
                        yield answer
                except BaseException as e:
                    error = e
                    raise
                finally:
                    call.end(context, error)

            return grpc.unary_stream_rpc_method_handler(
                streamed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        unary: Any = handler.unary_unary

        async def answered(request: Any, context: Context) -> Any:
            call = _Call("unary", method)
            error: BaseException | None = None
            try:
                return await unary(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                call.end(context, error)

        return grpc.unary_unary_rpc_method_handler(
            answered,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
