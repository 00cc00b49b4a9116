"""The platform's four execution controllers, served over the ledger.

``AgentExecutionCommandController`` / ``WorkflowExecutionCommandController``
(``create``, ``update``, ``updateStatus``, ``delete``) and
``AgentExecutionQueryController`` / ``WorkflowExecutionQueryController``
(``get``, ``list``, ``listBySession`` / ``listByWorkflow``, ``subscribe``). Both
kinds share one implementation; each concrete class only names its kind's messages.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from ledger.cli.grpc_server.core import (
    FROM_VERSION,
    NEXT_PAGE_TOKEN,
    VERSION,
    Context,
    Core,
    abort,
    for_caller,
    version_metadata,
)
from ledger.cli.grpc_server.listing import Lister, Query
from ledger.cli.grpc_server.subscriptions import ClosingError, follow_execution
from ledger.contract.errors import InvalidIdError
from ledger.contract.ids import check_id
from ledger.contract.kinds import AGENT_EXECUTION, WORKFLOW_EXECUTION, Kind
from ledger.grpc.agentexecution.v1 import command_pb2 as agent_command_pb2
from ledger.grpc.agentexecution.v1 import command_pb2_grpc as agent_command
from ledger.grpc.agentexecution.v1 import io_pb2 as agent_io
from ledger.grpc.agentexecution.v1 import query_pb2 as agent_query_pb2
from ledger.grpc.agentexecution.v1 import query_pb2_grpc as agent_query
from ledger.grpc.workflowexecution.v1 import command_pb2 as workflow_command_pb2
from ledger.grpc.workflowexecution.v1 import command_pb2_grpc as workflow_command
from ledger.grpc.workflowexecution.v1 import io_pb2 as workflow_io
from ledger.grpc.workflowexecution.v1 import query_pb2 as workflow_query_pb2
from ledger.grpc.workflowexecution.v1 import query_pb2_grpc as workflow_query

# The service descriptors, for reflection (the *_pb2_grpc modules import only the
# messages' modules, not their own file's).
SERVICE_FILES = (
    agent_command_pb2.DESCRIPTOR,
    agent_query_pb2.DESCRIPTOR,
    workflow_command_pb2.DESCRIPTOR,
    workflow_query_pb2.DESCRIPTOR,
)


@dataclass(frozen=True)
class KindApi:
    """The messages of one kind's controllers."""

    kind: Kind
    list_class: type[Message]


AGENT_API = KindApi(AGENT_EXECUTION, agent_io.AgentExecutionList)
WORKFLOW_API = KindApi(WORKFLOW_EXECUTION, workflow_io.WorkflowExecutionList)


async def _of_kind(context: Context, execution_id: str, kind: Kind) -> str:
    """``execution_id`` if well formed for ``kind``, else the call ends INVALID_ARGUMENT."""
    try:
        return check_id(execution_id, kind)
    except InvalidIdError as e:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))


class _Commands:
    """``create``, ``update``, ``updateStatus``, ``delete`` of one kind."""

    def __init__(self, core: Core, api: KindApi) -> None:
        self._core = core
        self._api = api

    async def create(self, request: Any, context: Context) -> Any:
        """The ledger's idempotent create (a callback_token in the spec is accepted)."""
        core = self._core
        await core.checked(context, request)
        record = await core.write(context, core.ledger.create, request, actor=core.actor(context))
        return core.answer(context, record)

    async def update(self, request: Any, context: Context) -> Any:
        """``Ledger.update``: metadata labels, annotations and tags only; a changed spec
        (or kind, or other metadata field) is FAILED_PRECONDITION."""
        core = self._core
        await core.checked(context, request)
        expected = await core.expected_version(context)
        await _of_kind(context, request.metadata.id, self._api.kind)
        record = await core.write(
            context,
            core.ledger.update,
            request,
            expected_version=expected,
            actor=core.actor(context),
        )
        return core.answer(context, record)

    async def updateStatus(self, request: Any, context: Context) -> Any:  # noqa: N802
        """``Ledger.update_status``: a terminal phase completes the execution."""
        core = self._core
        await core.checked(context, request)
        expected = await core.expected_version(context)
        execution_id = await _of_kind(context, request.execution_id, self._api.kind)
        record = await core.write(
            context,
            core.ledger.update_status,
            execution_id,
            request.status,
            expected_version=expected,
            actor=core.actor(context),
        )
        return core.answer(context, record)

    async def delete(self, request: Any, context: Context) -> Any:
        """``Ledger.delete``: cancelled first when open, then deleted; history kept.
        Answers the execution as it was when deleted."""
        core = self._core
        await core.checked(context, request)
        expected = await core.expected_version(context)
        execution_id = await _of_kind(context, request.value, self._api.kind)
        record = await core.write(
            context,
            core.ledger.delete,
            execution_id,
            expected_version=expected,
            actor=core.actor(context),
        )
        return core.answer(context, record)


class _Queries:
    """``get``, ``list``, ``list by ...``, ``subscribe`` of one kind."""

    def __init__(self, core: Core, api: KindApi) -> None:
        self._core = core
        self._api = api

    async def get(self, request: Any, context: Context) -> Any:
        """The execution's current resource."""
        core = self._core
        await core.checked(context, request)
        execution_id = await self._id(context, request.value)
        record = await core.run(context, core.ledger.read, execution_id)
        return core.answer(context, record)

    async def list(self, request: Any, context: Context) -> Any:
        """One page of executions by phase and labels."""
        await self._core.checked(context, request)
        query = Query(
            self._api.kind,
            phase=request.phase,
            tags=list(request.tags),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return await self._page(context, query)

    async def subscribe(self, request: Any, context: Context) -> AsyncIterator[Any]:
        """The current resource, then every change, until a terminal phase."""
        core = self._core
        await core.checked(context, request)
        execution_id = await self._id(context, self._subscribed_id(request))
        after = await version_metadata(context, FROM_VERSION)
        reader = core.is_reader(context)
        record = await core.run(context, core.ledger.read, execution_id)
        if after is not None and after > record.version:
            await abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"execution {execution_id!r} is at version {record.version}, "
                f"before x-from-version {after}",
            )
        first = record.version if after is None else after + 1
        await context.send_initial_metadata(((VERSION, str(first)),))
        if after is None:
            yield for_caller(record.resource, reader=reader)
            after = record.version
            if record.phase.is_terminal:
                return
        changes = follow_execution(
            core.ledger, core.follower, execution_id, after, functools.partial(core.run, context)
        )
        try:
            async for resource in changes:
                yield for_caller(resource, reader=reader)
        except ClosingError as e:
            await abort(context, e.code, e.message)

    def _subscribed_id(self, request: Any) -> str:
        return str(request.value)

    async def _page(self, context: Context, query: Query) -> Any:
        core = self._core
        page = await core.run(context, lambda: Lister(core.status_view, core.ledger, query).page())
        if page.next_token is not None:
            context.set_trailing_metadata(((NEXT_PAGE_TOKEN, page.next_token),))
        answer: Any = self._api.list_class()
        answer.total_pages = page.total_pages
        reader = core.is_reader(context)
        for record in page.entries:
            answer.entries.append(for_caller(record.resource, reader=reader))
        return answer

    async def _id(self, context: Context, execution_id: str) -> str:
        """``execution_id``, if it is one of this service's kind (else INVALID_ARGUMENT)."""
        return await _of_kind(context, execution_id, self._api.kind)


class AgentExecutionCommands(_Commands, agent_command.AgentExecutionCommandControllerServicer):
    """``ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController``."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, AGENT_API)


class WorkflowExecutionCommands(
    _Commands, workflow_command.WorkflowExecutionCommandControllerServicer
):
    """``ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionCommandController``."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, WORKFLOW_API)


class AgentExecutionQueries(_Queries, agent_query.AgentExecutionQueryControllerServicer):
    """``ai.stigmer.agentic.agentexecution.v1.AgentExecutionQueryController``."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, AGENT_API)

    async def listBySession(self, request: Any, context: Context) -> Any:  # noqa: N802
        """One page of a session's executions (see :mod:`.listing` for its cost)."""
        await self._core.checked(context, request)
        session_id = str(request.session_id)
        if not session_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        query = Query(
            self._api.kind,
            page_size=request.page_size,
            page_token=request.page_token,
            resource_filter=lambda resource: resource.spec.session_id == session_id,  # type: ignore[union-attr]
        )
        return await self._page(context, query)


class WorkflowExecutionQueries(_Queries, workflow_query.WorkflowExecutionQueryControllerServicer):
    """``ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionQueryController``."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, WORKFLOW_API)

    async def listByWorkflow(self, request: Any, context: Context) -> Any:  # noqa: N802
        """One page of a workflow's executions (``spec.workflow_id``)."""
        await self._core.checked(context, request)
        workflow_id = str(request.workflow_id)
        if not workflow_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "workflow_id is required")
        query = Query(
            self._api.kind,
            page_size=request.page_size,
            page_token=request.page_token,
            row_filter=lambda row: row.workflow_id == workflow_id,
        )
        return await self._page(context, query)

    def _subscribed_id(self, request: Any) -> str:
        return str(request.execution_id)


def add_services(server: grpc.aio.Server, core: Core) -> list[str]:
    """Adds the four controllers to ``server``; returns their full service names."""
    agent_command.add_AgentExecutionCommandControllerServicer_to_server(
        AgentExecutionCommands(core), server
    )
    workflow_command.add_WorkflowExecutionCommandControllerServicer_to_server(
        WorkflowExecutionCommands(core), server
    )
    agent_query.add_AgentExecutionQueryControllerServicer_to_server(
        AgentExecutionQueries(core), server
    )
    workflow_query.add_WorkflowExecutionQueryControllerServicer_to_server(
        WorkflowExecutionQueries(core), server
    )
    return [
        service.full_name for file in SERVICE_FILES for service in file.services_by_name.values()
    ]
