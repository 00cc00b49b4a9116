"""What every service of ``ledger serve`` shares: the ledger, a thread pool for its
blocking calls, the error mapping, request metadata, and how a resource is answered.

The ledger's calls block (a store round trip), so they run in a thread pool of
their own, never on the event loop. A call whose client deadline has already
passed when its turn comes is refused with ``DEADLINE_EXCEEDED`` before anything
is written; one that is cut off while it runs may still complete in the store
(the client then reads, or retries: create is idempotent, and a write with
``x-expected-version`` fails cleanly when it already happened).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio

from ledger.application import ExecutionRecord, Ledger
from ledger.cli.grpc_server.auth import Authenticator, Role
from ledger.cli.grpc_server.errors import status_of
from ledger.cli.grpc_server.subscriptions import LogFollower
from ledger.cli.grpc_server.wire import check_known_fields
from ledger.contract.errors import InvalidResourceError
from ledger.contract.kinds import Resource, copy_resource

T = TypeVar("T")

EXPECTED_VERSION = "x-expected-version"
"""Request metadata: write only if the execution is at this version (else ``ABORTED``)."""
FROM_VERSION = "x-from-version"
"""Request metadata of ``subscribe``: resume after this version."""
VERSION = "x-version"
"""Trailing metadata of every answer holding a resource: its version."""
NEXT_PAGE_TOKEN = "x-next-page-token"  # noqa: S105 - a metadata key
"""Trailing metadata of ``list``: the cursor of the next page (absent after the last)."""

Context = aio.ServicerContext[Any, Any]


def call_metadata(context: Context) -> list[tuple[str, str | bytes]]:
    """The call's request metadata as (key, value) pairs."""
    return [(str(key), value) for key, value in context.invocation_metadata() or ()]


def metadata_value(context: Context, key: str) -> str | None:
    """The first value of request metadata ``key`` (text), or None."""
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


class Core:
    """The ledger as the services call it: off the event loop, errors as status codes."""

    def __init__(
        self,
        ledger: Ledger,
        executor: ThreadPoolExecutor,
        authenticator: Authenticator | None,
        *,
        follower: LogFollower,
        status_view: Any,
    ) -> None:
        self.ledger = ledger
        self.executor = executor
        self.authenticator = authenticator
        self.follower = follower
        self.status_view = status_view
        """The status view (``Views.status``), for listing."""

    async def run(self, context: Context, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the thread pool; a ledger error aborts the call
        with its status code and message."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except Exception as e:
            code, message = status_of(e)
            await abort(context, code, message)

    async def write(
        self, context: Context, fn: Callable[..., ExecutionRecord], *args: Any, **kwargs: Any
    ) -> ExecutionRecord:
        """A command: as :meth:`run`, then the subscriptions' follower is woken."""
        record = await self.run(context, fn, *args, **kwargs)
        self.follower.wake()
        return record

    async def checked(self, context: Context, request: Message) -> None:
        """Refuses a request holding a field the ledger does not know (see :mod:`.wire`)."""
        try:
            check_known_fields(request)
        except InvalidResourceError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def actor(self, context: Context) -> str:
        """Who is acting, for the audit: the token's name (empty without authentication)."""
        if self.authenticator is None:
            return ""
        entry = self.authenticator.identify(call_metadata(context))
        return entry.name if entry is not None else ""

    def is_reader(self, context: Context) -> bool:
        if self.authenticator is None:
            return False
        entry = self.authenticator.identify(call_metadata(context))
        return entry is None or entry.role is not Role.WRITER

    async def expected_version(self, context: Context) -> int | None:
        """``x-expected-version`` of the request, or None; malformed: ``INVALID_ARGUMENT``."""
        return await version_metadata(context, EXPECTED_VERSION)

    def answer(self, context: Context, record: ExecutionRecord) -> Resource:
        """The resource of ``record`` as answered to this caller (its version in trailing
        metadata; see :func:`for_caller`)."""
        context.set_trailing_metadata(((VERSION, str(record.version)),))
        return for_caller(record.resource, reader=self.is_reader(context))


def for_caller(resource: Resource, *, reader: bool) -> Resource:
    """``resource`` as a caller may see it: a writer (a runner, which needs its inputs)
    sees it whole; a reader sees no callback token and no secret value (blank)."""
    if not reader:
        return resource
    resource = copy_resource(resource)  # Subscriptions share their records.
    spec: Any = resource.spec
    if spec.callback_token:
        spec.callback_token = b""
    for value in spec.runtime_env.values():
        if value.is_secret:
            value.value = ""
    return resource


async def version_metadata(context: Context, key: str) -> int | None:
    """Request metadata ``key`` as a version (0 or more), or None when absent."""
    text = metadata_value(context, key)
    if text is None:
        return None
    if not text.strip().isdigit():
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"metadata {key} must be a version (an integer, 0 or more), not {text[:40]!r}",
        )
    return int(text)


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the call with ``code`` and ``message`` (raises)."""
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
