"""The platform's four execution controllers, served over the ledger.

``AgentExecutionCommandController`` / ``WorkflowExecutionCommandController``
(``create``, ``update``, ``updateStatus``, ``delete``) and
``AgentExecutionQueryController`` / ``WorkflowExecutionQueryController``
(``get``, ``list``, ``listBySession`` / ``listByWorkflow``, ``subscribe``). Both
kinds share one implementation; each concrete class only names its kind's messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

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
from ledger.server.core import Context, Core, abort

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
        """Metadata labels, annotations and tags only (see :mod:`ledger.server`)."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "update is not served yet")

    async def updateStatus(self, request: Any, context: Context) -> Any:  # noqa: N802
        """``Ledger.update_status``: a terminal phase completes the execution."""
        core = self._core
        await core.checked(context, request)
        expected = await core.expected_version(context)
        record = await core.write(
            context,
            core.ledger.update_status,
            request.execution_id,
            request.status,
            expected_version=expected,
            actor=core.actor(context),
        )
        return core.answer(context, record)

    async def delete(self, request: Any, context: Context) -> Any:
        """Records the execution as deleted; its history is kept."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "delete is not served yet")


class _Queries:
    """``get``, ``list``, ``list by ...``, ``subscribe`` of one kind."""

    def __init__(self, core: Core, api: KindApi) -> None:
        self._core = core
        self._api = api

    async def get(self, request: Any, context: Context) -> Any:
        """The execution's current resource."""
        core = self._core
        await core.checked(context, request)
        record = await core.run(context, core.ledger.read, self._id(request.value))
        return core.answer(context, record)

    async def list(self, request: Any, context: Context) -> Any:
        """One page of executions by phase and labels."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "list is not served yet")

    async def subscribe(self, request: Any, context: Context) -> AsyncIterator[Any]:
        """The current resource, then every change, until a terminal phase."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "subscribe is not served yet")
        yield  # pragma: no cover

    def _id(self, execution_id: str) -> str:
        """An id of this service's kind (another kind's id is simply not found here)."""
        return execution_id


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
        """One page of a session's executions."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "listBySession is not served yet")


class WorkflowExecutionQueries(_Queries, workflow_query.WorkflowExecutionQueryControllerServicer):
    """``ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionQueryController``."""

    def __init__(self, core: Core) -> None:
        super().__init__(core, WORKFLOW_API)

    async def listByWorkflow(self, request: Any, context: Context) -> Any:  # noqa: N802
        """One page of a workflow's executions."""
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "listByWorkflow is not served yet")

    async def subscribe(self, request: Any, context: Context) -> AsyncIterator[Any]:
        """As the agent twin's, from ``SubscribeWorkflowExecutionRequest.execution_id``."""
        async for resource in super().subscribe(request, context):
            yield resource


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
