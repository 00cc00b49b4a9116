"""The conversation with waiting callers while their executions run.

:class:`CallerWatch` follows the ledger's log for the open executions that a caller
awaits (those recorded by the caller activity, which left where it waits in
ledger-owned annotations, :data:`~ledger.contract.names.CALLER_WORKFLOW_ID` and its
siblings), and talks to Temporal in both directions:

- **Progress as heartbeats** (down). When an execution whose caller set a
  ``heartbeat_timeout`` records a status change, the watch heartbeats the caller's
  activity by task token with a small progress summary as details (phase, version,
  counts of messages, tool calls and tasks, the last tool or task name), so
  ``temporal workflow describe`` shows live progress. Heartbeats are throttled per
  execution to one per third of the caller's timeout, and sent only for a change:
  an execution that records nothing for longer than the caller's timeout is not kept
  alive, so Temporal times the caller out and its retry policy applies.
- **Cancel requests and gone callers** (up). Every :attr:`CallerWatch.probe_interval`
  seconds it describes each caller's workflow (one call per workflow): an activity in
  state ``CANCEL_REQUESTED`` is recorded as ``CancelRequested``; a workflow that is no
  longer running, or whose activity is no longer pending at the execution's attempt,
  as ``CallerGone``. A heartbeat answered by ``AsyncActivityCancelledError`` or
  ``NOT_FOUND`` records the same facts earlier. The aggregate records each once.

It rebuilds what it watches from the log at every start (each ``Created`` decoded
from the log itself, no read of the execution) and sends nothing before it has read
the log to its head, so a restart never heartbeats an execution whose
``Completed`` is recorded; before each heartbeat it reads the execution again and
drops it if it has ended. Executions recorded without caller annotations (by other
clients) are not watched: the ledger cannot know their callers' timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from eventsourcing.persistence import Notification
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import AsyncActivityCancelledError, Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from ledger.application import Ledger
from ledger.contract.errors import ExecutionNotFoundError
from ledger.contract.names import (
    CALLER_ACTIVITY_ID,
    CALLER_ATTEMPT,
    CALLER_GONE_AT,
    CALLER_GONE_TOPICS,
    CALLER_HEARTBEAT_TIMEOUT,
    CALLER_RUN_ID,
    CALLER_WORKFLOW_ID,
    CANCEL_REQUESTED_AT,
    CANCEL_REQUESTED_TOPICS,
    COMPLETED_TOPICS,
    CREATED_TOPICS,
    STATUS_CHANGED_TOPICS,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.domain.redaction import redact_token
from projections.dispatch.outage import STORE_ERRORS
from projections.dispatch.telemetry import heartbeat_batch, heartbeat_result

logger = logging.getLogger(__name__)

ACTOR = "ledger-dispatcher"
"""The actor of the facts the watch records."""

_TOPICS = (
    *CREATED_TOPICS,
    *STATUS_CHANGED_TOPICS,
    *COMPLETED_TOPICS,
    *CANCEL_REQUESTED_TOPICS,
    *CALLER_GONE_TOPICS,
)


@dataclass
class _Caller:
    """One watched execution and what the watch knows of its caller."""

    execution_id: str
    token: bytes
    workflow_id: str
    run_id: str
    activity_id: str
    attempt: int
    heartbeat_timeout: float | None
    version: int
    beaten_version: int = 0
    beaten_at: float = field(default=-1e9)
    cancel_recorded: bool = False
    gone_recorded: bool = False


@dataclass
class CallerWatchStats:
    """What one run did, by kind."""

    heartbeats: int = 0
    cancel_requests: int = 0
    gone: int = 0


class CallerWatch:
    """Heartbeats progress to waiting callers and records their cancel requests and
    departures (see the module's docstring). One per store: run it where the
    dispatcher holds its single-active lock."""

    def __init__(
        self,
        ledger: Ledger,
        client: Client,
        *,
        poll_interval: float = 0.2,
        probe_interval: float = 2.0,
        max_in_flight: int = 64,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.stats = CallerWatchStats()
        self._callers: dict[str, _Caller] = {}
        self._position = 0
        self._calls = asyncio.Semaphore(max_in_flight)

    @property
    def watched(self) -> list[str]:
        """The ids of the executions watched now."""
        return sorted(self._callers)

    async def run(self, stop: asyncio.Event) -> CallerWatchStats:
        """Follows the log and talks to callers until ``stop`` is set."""
        next_probe = 0.0
        while not stop.is_set():
            try:
                changed = await self._catch_up()
                await self._heartbeat(changed)
                if time.monotonic() >= next_probe:
                    await self._probe()
                    next_probe = time.monotonic() + self.probe_interval
            except STORE_ERRORS as e:
                logger.warning("caller watch: the store is unavailable (%s); retrying", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
        return self.stats

    # Following the log.

    async def _catch_up(self) -> set[str]:
        """Reads the log to its head; returns the executions that changed."""
        changed: set[str] = set()
        while True:
            page = await asyncio.to_thread(
                self.ledger.recorder.select_notifications,
                start=self._position + 1,
                limit=500,
                topics=_TOPICS,
            )
            for notification in page:
                self._position = notification.id
                self._follow(notification, changed)
            if len(page) < 500:
                return changed

    def _follow(self, notification: Notification, changed: set[str]) -> None:
        execution_id = str(notification.originator_id)
        topic = notification.topic
        if topic in COMPLETED_TOPICS:
            self._callers.pop(execution_id, None)
            changed.discard(execution_id)
            return
        if topic in CREATED_TOPICS:
            caller = self._caller_of(notification)
            if caller is not None:
                self._callers[execution_id] = caller
            return
        caller = self._callers.get(execution_id)
        if caller is None:
            return
        caller.version = max(caller.version, notification.originator_version)
        if topic in CANCEL_REQUESTED_TOPICS:
            caller.cancel_recorded = True
        elif topic in CALLER_GONE_TOPICS:
            caller.gone_recorded = True
        else:
            changed.add(execution_id)

    def _caller_of(self, notification: Notification) -> _Caller | None:
        """The caller of a newly created execution, from the annotations of its
        ``Created`` event, decoded from the log (None: not recorded by the caller
        activity, or unreadable). Whatever follows it in the log (its end, a cancel
        request, a gone caller) is read next, in order."""
        try:
            created = cast(Execution.Created, self.ledger.mapper.to_domain_event(notification))
        except Exception as e:  # A poisoned event: not watched (the dispatcher parks it).
            logger.warning(
                "caller watch: %s: its Created event cannot be read (%s); not watched",
                notification.originator_id,
                e,
            )
            return None
        annotations = created.metadata.annotations
        token = bytes(cast(Any, created.spec).callback_token)
        if not token or CALLER_WORKFLOW_ID not in annotations:
            return None
        timeout = annotations.get(CALLER_HEARTBEAT_TIMEOUT)
        return _Caller(
            execution_id=str(notification.originator_id),
            token=token,
            workflow_id=annotations[CALLER_WORKFLOW_ID],
            run_id=annotations.get(CALLER_RUN_ID, ""),
            activity_id=annotations.get(CALLER_ACTIVITY_ID, ""),
            attempt=int(annotations.get(CALLER_ATTEMPT) or 1),
            heartbeat_timeout=float(timeout) if timeout else None,
            version=notification.originator_version,
            beaten_version=1,  # Progress is a status change: Created alone sends nothing.
            cancel_recorded=CANCEL_REQUESTED_AT in annotations,
            gone_recorded=CALLER_GONE_AT in annotations,
        )

    # Down: progress.

    async def _heartbeat(self, changed: Iterable[str]) -> None:
        now = time.monotonic()
        due = []
        for execution_id in list(self._callers):
            caller = self._callers[execution_id]
            if caller.heartbeat_timeout is None or caller.gone_recorded:
                continue
            if caller.version <= caller.beaten_version:
                continue  # Nothing new: silence is never covered up.
            if now - caller.beaten_at < caller.heartbeat_timeout / 3:
                continue  # Throttled; the change is sent on a later tick.
            due.append(caller)
        del changed  # Every watched execution is checked; changes only say who moved.
        with heartbeat_batch(len(due)):
            await asyncio.gather(*(self._beat(c) for c in due))

    async def _beat(self, caller: _Caller) -> None:
        async with self._calls:
            try:
                record = await asyncio.to_thread(self.ledger.read, caller.execution_id)
            except ExecutionNotFoundError:
                self._callers.pop(caller.execution_id, None)
                return
            if record.phase.is_terminal:  # Never a heartbeat after Completed.
                self._callers.pop(caller.execution_id, None)
                return
            details = progress(record.resource, record.version)
            handle = self.client.get_async_activity_handle(task_token=caller.token)
            try:
                await handle.heartbeat(details)
            except AsyncActivityCancelledError:
                heartbeat_result("cancel_requested")
                await self._cancel_requested(caller)
            except RPCError as e:
                heartbeat_result("gone" if e.status == RPCStatusCode.NOT_FOUND else "failed")
                if e.status == RPCStatusCode.NOT_FOUND:
                    await self._gone(caller, "the caller's activity is gone (heartbeat: not found)")
                else:
                    logger.info(
                        "heartbeat to %s failed (%s: %s); retried with the next change",
                        redact_token(caller.token),
                        e.status.name if e.status else "?",
                        e.message,
                    )
                return
            caller.beaten_version = record.version
            caller.beaten_at = time.monotonic()
            self.stats.heartbeats += 1
            heartbeat_result("sent")
            logger.debug("%s: heartbeat at version %d", caller.execution_id, record.version)

    # Up: cancel requests and gone callers.

    async def _probe(self) -> None:
        by_workflow: dict[tuple[str, str], list[_Caller]] = {}
        for caller in self._callers.values():
            if caller.gone_recorded:
                continue
            by_workflow.setdefault((caller.workflow_id, caller.run_id), []).append(caller)
        await asyncio.gather(*(self._probe_workflow(k, v) for k, v in by_workflow.items()))

    async def _probe_workflow(self, key: tuple[str, str], callers: list[_Caller]) -> None:
        workflow_id, run_id = key
        async with self._calls:
            try:
                handle = self.client.get_workflow_handle(workflow_id, run_id=run_id or None)
                description = await handle.describe()
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    for caller in callers:
                        await self._gone(caller, "the caller's workflow is gone (not found)")
                else:
                    logger.info("probing caller workflow %s failed: %s", workflow_id, e.message)
                return
        if description.status != WorkflowExecutionStatus.RUNNING:
            name = description.status.name.lower() if description.status else "closed"
            for caller in callers:
                await self._gone(caller, f"the caller's workflow is {name}")
            return
        pending = {a.activity_id: a for a in description.raw_description.pending_activities}
        for caller in callers:
            activity = pending.get(caller.activity_id)
            if activity is None or activity.attempt != caller.attempt:
                await self._gone(
                    caller,
                    "the caller's activity is no longer pending"
                    if activity is None
                    else f"the caller moved on to attempt {activity.attempt}",
                )
            elif activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED:
                await self._cancel_requested(caller)

    async def _cancel_requested(self, caller: _Caller) -> None:
        if caller.cancel_recorded:
            return
        await asyncio.to_thread(
            self.ledger.record_cancel_request,
            caller.execution_id,
            by=caller.workflow_id,
            actor=ACTOR,
        )
        caller.cancel_recorded = True
        self.stats.cancel_requests += 1
        logger.info("%s: the caller asked to cancel", caller.execution_id)

    async def _gone(self, caller: _Caller, reason: str) -> None:
        if caller.gone_recorded:
            return
        await asyncio.to_thread(
            self.ledger.record_caller_gone, caller.execution_id, reason, actor=ACTOR
        )
        caller.gone_recorded = True
        self.stats.gone += 1
        logger.info("%s: %s", caller.execution_id, reason)


def progress(resource: Any, version: int) -> dict[str, Any]:
    """The heartbeat details of an execution: small, never a secret or the token."""
    status = resource.status
    summary: dict[str, Any] = {
        "execution_id": resource.metadata.id,
        "phase": Phase(status.phase).name,
        "version": version,
    }
    for name in ("messages", "tool_calls", "tasks", "sub_agent_executions"):
        if name in status.DESCRIPTOR.fields_by_name:
            summary[name] = len(getattr(status, name))
    if "tool_calls" in status.DESCRIPTOR.fields_by_name and status.tool_calls:
        summary["last"] = status.tool_calls[-1].name
    if "tasks" in status.DESCRIPTOR.fields_by_name and status.tasks:
        summary["last"] = status.tasks[-1].task_name
    return summary
