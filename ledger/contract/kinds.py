"""The two resource kinds: their messages, id prefixes and status merge keys.

An execution is an ``AgentExecution`` or a ``WorkflowExecution`` message (see
``protos/``). This module knows, for each kind, its message classes, its id
prefix and where its callback token lives, so the rest of the ledger can treat
both kinds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from google.protobuf.message import Message

from ledger.api.agentexecution.v1 import api_pb2 as agent_api
from ledger.api.agentexecution.v1 import spec_pb2 as agent_spec
from ledger.api.agentexecution.v1 import status_pb2 as agent_status
from ledger.api.workflowexecution.v1 import api_pb2 as workflow_api
from ledger.api.workflowexecution.v1 import spec_pb2 as workflow_spec
from ledger.api.workflowexecution.v1 import status_pb2 as workflow_status
from ledger.contract.errors import UnknownKindError

API_VERSION = "agentic.stigmer.ai/v1"
"""The only ``api_version`` the ledger records."""

MAX_CALLBACK_TOKEN_BYTES = 2048
"""A Temporal task token is a few hundred bytes; anything over 2 KiB is refused."""

AgentExecution = agent_api.AgentExecution
WorkflowExecution = workflow_api.WorkflowExecution
AgentExecutionSpec = agent_spec.AgentExecutionSpec
WorkflowExecutionSpec = workflow_spec.WorkflowExecutionSpec
AgentExecutionStatus = agent_status.AgentExecutionStatus
WorkflowExecutionStatus = workflow_status.WorkflowExecutionStatus

Resource: TypeAlias = agent_api.AgentExecution | workflow_api.WorkflowExecution
Spec: TypeAlias = agent_spec.AgentExecutionSpec | workflow_spec.WorkflowExecutionSpec
Status: TypeAlias = agent_status.AgentExecutionStatus | workflow_status.WorkflowExecutionStatus


@dataclass(frozen=True)
class Kind:
    """Everything the ledger needs to know about one resource kind."""

    name: str
    id_prefix: str
    resource_class: type[Message]
    spec_class: type[Message]
    status_class: type[Message]
    upsert_keys: tuple[tuple[str, str], ...]
    """Repeated status fields whose entries upsert by a key field: (field, key)."""
    append_fields: tuple[str, ...]
    """Repeated status fields whose entries append."""

    def new_id(self) -> str:
        """A fresh id: the kind's prefix and a lowercase ULID."""
        from ulid import ULID  # Here: importing it costs the read commands ~20 ms.

        return f"{self.id_prefix}-{str(ULID()).lower()}"

    def empty_resource(self) -> Resource:
        resource = self.resource_class()
        assert isinstance(resource, (AgentExecution, WorkflowExecution))
        return resource


AGENT_EXECUTION = Kind(
    name="AgentExecution",
    id_prefix="aex",
    resource_class=AgentExecution,
    spec_class=AgentExecutionSpec,
    status_class=AgentExecutionStatus,
    upsert_keys=(("tool_calls", "id"), ("sub_agent_executions", "id")),
    append_fields=("messages",),
)
WORKFLOW_EXECUTION = Kind(
    name="WorkflowExecution",
    id_prefix="wex",
    resource_class=WorkflowExecution,
    spec_class=WorkflowExecutionSpec,
    status_class=WorkflowExecutionStatus,
    upsert_keys=(("tasks", "task_id"),),
    append_fields=(),
)
KINDS: dict[str, Kind] = {k.name: k for k in (AGENT_EXECUTION, WORKFLOW_EXECUTION)}


def kind_named(name: str, *, execution_id: str = "") -> Kind:
    """The kind called ``name``, or :class:`UnknownKindError`."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKindError(
            f"unknown kind {name!r}: expected one of {sorted(KINDS)}",
            execution_id=execution_id,
            field="kind",
        ) from None


def kind_of(resource: Message) -> Kind:
    """The kind of a resource message, by its class."""
    for kind in KINDS.values():
        if isinstance(resource, kind.resource_class):
            return kind
    raise UnknownKindError(
        f"unknown resource type {type(resource).__name__}: expected "
        "AgentExecution or WorkflowExecution",
        field="kind",
    )


def copy_resource(resource: Resource) -> Resource:
    """A deep copy of ``resource``."""
    copy: Any = type(resource)()
    copy.CopyFrom(resource)
    return cast(Resource, copy)
