"""The caller side: a Temporal activity that records an execution and waits for it.

:class:`ExecutionActivities` holds two activities, ``ledger.start_agent_execution``
and ``ledger.start_workflow_execution``. Each takes the resource to run
(metadata and spec), records it in the ledger with the activity's own task
token as ``spec.callback_token``, and goes async
(``activity.raise_complete_async()``). The activity completes when the
execution does: the dispatcher replays the token with the final resource, a
typed failure, or a cancellation.

Ids (:func:`execution_id_for`): a caller may give ``metadata.id``; attempt 1 records
that id and a later attempt (Temporal's retry) records ``<id>-a<attempt>``. Without
one, the id is derived from the workflow id, run id, activity id and attempt. Either
way re-running the same attempt never records a second execution, and a new attempt
is a new execution whose predecessor's late completion is recorded as ``stale``. A
refused resource (a :class:`~ledger.contract.errors.UserError`: a malformed id, a
missing field, the id taken by another spec) fails the activity without retry.

The activity also records where its caller waits, in ledger-owned annotations of the
execution (:data:`~ledger.contract.names.CALLER_WORKFLOW_ID` and its siblings:
workflow id, run id, activity id, attempt, and the ``heartbeat_timeout`` if set).

What Temporal requires of the caller (see :mod:`ledger.workflow` for helpers):

- ``start_to_close_timeout`` applies per attempt and must cover the whole wait
  for the execution;
- leave ``heartbeat_timeout`` unset: nobody heartbeats a pending async activity;
- ``activity.raise_complete_async()`` raises a ``BaseException``
  (``CompleteAsyncError``): code around it must not swallow it.

Register with a worker::

    activities = ExecutionActivities(ledger)
    Worker(client, task_queue="q", workflows=[...], activities=activities.all())
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ledger.application import Ledger
from ledger.contract.errors import UserError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    Kind,
    Resource,
    WorkflowExecution,
    copy_resource,
)
from ledger.contract.names import (
    CALLER_ACTIVITY_ID,
    CALLER_ATTEMPT,
    CALLER_HEARTBEAT_TIMEOUT,
    CALLER_RUN_ID,
    CALLER_WORKFLOW_ID,
)
from ledger.observability.tracing import record_trace_context
from ledger.temporal.log_redaction import install_temporal_log_redaction
from ledger.temporal.workflow import START_AGENT_EXECUTION, START_WORKFLOW_EXECUTION

# The worker that runs these activities holds task tokens: keep them out of its logs.
install_temporal_log_redaction()


def execution_id_for(
    kind: Kind,
    workflow_id: str,
    run_id: str,
    activity_id: str,
    attempt: int,
    *,
    given: str = "",
) -> str:
    """The execution id of one activity attempt.

    With a caller-``given`` id: that id for attempt 1, ``<given>-a<attempt>`` after.
    Without: ``<prefix>-<26 base32 chars of a SHA-256>`` of the workflow id, run id,
    activity id and attempt.
    """
    if given:
        return given if attempt <= 1 else f"{given}-a{attempt}"
    digest = hashlib.sha256(f"{workflow_id}\0{run_id}\0{activity_id}\0{attempt}".encode()).digest()
    body = base64.b32encode(digest).decode("ascii").lower().rstrip("=")[:26]
    return f"{kind.id_prefix}-{body}"


class ExecutionActivities:
    """Activities that record an execution carrying their own task token, then wait."""

    def __init__(self, ledger: Ledger, *, actor: str = "temporal") -> None:
        self.ledger = ledger
        self.actor = actor

    def all(self) -> Sequence[Callable[..., Any]]:
        """Both activities, for ``Worker(activities=...)``."""
        return [self.start_agent_execution, self.start_workflow_execution]

    @activity.defn(name=START_AGENT_EXECUTION)
    async def start_agent_execution(self, resource: AgentExecution) -> AgentExecution:
        """Records an AgentExecution awaited by this activity; completes when it does."""
        await self._start(AGENT_EXECUTION, resource)
        raise AssertionError("unreachable")  # pragma: no cover

    @activity.defn(name=START_WORKFLOW_EXECUTION)
    async def start_workflow_execution(self, resource: WorkflowExecution) -> WorkflowExecution:
        """Records a WorkflowExecution awaited by this activity; completes when it does."""
        await self._start(WORKFLOW_EXECUTION, resource)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self, kind: Kind, resource: Resource) -> None:
        info = activity.info()
        request: Any = copy_resource(resource)
        workflow_id, run_id = info.workflow_id or "", info.workflow_run_id or ""
        request.metadata.id = execution_id_for(
            kind, workflow_id, run_id, info.activity_id, info.attempt, given=request.metadata.id
        )
        request.spec.callback_token = info.task_token
        annotations = request.metadata.annotations
        annotations[CALLER_WORKFLOW_ID] = workflow_id
        annotations[CALLER_RUN_ID] = run_id
        annotations[CALLER_ACTIVITY_ID] = info.activity_id
        annotations[CALLER_ATTEMPT] = str(info.attempt)
        if info.heartbeat_timeout:
            annotations[CALLER_HEARTBEAT_TIMEOUT] = f"{info.heartbeat_timeout.total_seconds():g}"
        record_trace_context(annotations)  # The caller's trace, for the execution's spans.
        try:
            await asyncio.to_thread(self.ledger.create, request, actor=self.actor)
        except UserError as e:  # Retrying the same resource would be refused again.
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from None
        activity.raise_complete_async()
