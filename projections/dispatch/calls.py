"""Replaying an execution's callback token into Temporal.

:class:`CallbackSender` turns one completed execution into the Temporal call
that wakes its caller, and says what came of it:

- COMPLETED: ``complete(final resource)``;
- FAILED: ``fail(ApplicationError(message, final resource, type=error.type,
  non_retryable=True))``;
- CANCELLED: ``report_cancellation(final resource)``. Temporal refuses that
  unless the caller asked to cancel; then the activity fails with a
  non-retryable ``ApplicationError`` of type ``ExecutionCancelled`` carrying the
  final resource.

The final resource is the execution's resource with ``spec.callback_token``
cleared and every ``is_secret`` runtime_env value blanked, so no secret ever
enters a workflow's history.

What Temporal answers decides the outcome: NOT_FOUND (the activity completed,
timed out, was retried or its workflow closed) is ``stale``, or
``stale_after_attempt`` when an earlier attempt's fate is unknown;
INVALID_ARGUMENT (a token that does not deserialize) is ``rejected``; anything
else is transient, retried with exponential backoff a bounded number of times,
then ``parked``. Every call carries an ``rpc_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf.message import Message
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from ledger.contract.kinds import Resource, copy_resource
from ledger.contract.phases import Phase
from ledger.domain.execution import DEFAULT_ERROR_TYPE, Execution
from ledger.domain.redaction import redact_token
from ledger.store.backoff import Backoff
from projections.dispatch.delivery import Call, Outcome

logger = logging.getLogger(__name__)

CANCELLED_ERROR_TYPE = "ExecutionCancelled"
"""The ``ApplicationError`` type a cancelled execution fails its activity with, when
its caller had not asked to cancel."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff for transient failures."""

    max_tries: int = 5
    """Tries of one call, the first included, before the delivery is parked."""
    initial_backoff: float = 0.2
    """Seconds to wait after the first failed try; doubled after each next one."""
    max_backoff: float = 5.0
    """The longest wait between two tries."""
    rpc_timeout: timedelta = timedelta(seconds=10)
    """How long each call may take."""

    @property
    def delays(self) -> Backoff:
        """The waits between tries, as a :class:`~ledger.store.backoff.Backoff`."""
        return Backoff(initial=self.initial_backoff, maximum=self.max_backoff)

    def backoff(self, tries: int) -> float:
        """Seconds to wait after the ``tries``-th failed try (1-based)."""
        return self.delays.delay(tries)


@dataclass(frozen=True)
class CallbackResult:
    """What came of a callback: its outcome, the call made, and Temporal's answer."""

    outcome: Outcome
    call: Call
    grpc_status: str = ""
    detail: str = ""
    tries: int = 1


def final_resource(execution: Execution) -> Resource:
    """The resource the caller receives: token cleared, secret values blanked."""
    resource = copy_resource(execution.resource)
    spec: Any = resource.spec
    spec.callback_token = b""
    for value in spec.runtime_env.values():
        if value.is_secret:
            value.value = ""
    return resource


def call_for(phase: Phase) -> Call:
    """The first call a terminal phase makes."""
    return {
        Phase.COMPLETED: Call.COMPLETE,
        Phase.FAILED: Call.FAIL,
        Phase.CANCELLED: Call.REPORT_CANCELLATION,
    }[phase]


def completed_phase(execution: Execution) -> Phase:
    """The terminal phase of a completed execution."""
    assert execution.outcome is not None, "only completed executions are sent"
    return Phase(execution.outcome.phase)


class CallbackSender:
    """Makes the Temporal call for one completed execution, with bounded retries
    (:attr:`policy`), through :attr:`client`."""

    def __init__(self, client: Client, policy: RetryPolicy | None = None) -> None:
        self.client = client
        self.policy = policy or RetryPolicy()

    async def send(
        self,
        execution: Execution,
        token: bytes,
        *,
        earlier_attempt_unconfirmed: bool = False,
    ) -> CallbackResult:
        """Calls Temporal for ``execution`` (whose Completed event is recorded)."""
        outcome_event = execution.outcome
        assert outcome_event is not None, "only completed executions are sent"
        phase = Phase(outcome_event.phase)
        resource = final_resource(execution)
        call = call_for(phase)
        unconfirmed = earlier_attempt_unconfirmed
        tries = 0
        while True:
            tries += 1
            try:
                await self._call(token, call, resource, outcome_event)
            except _CancellationNotRequestedError:
                call = Call.FAIL_CANCELLED  # The caller did not ask to cancel: fail instead.
                tries -= 1  # The refusal is an answer, not a failed try.
                continue
            except RPCError as e:
                status = e.status
                if status == RPCStatusCode.NOT_FOUND:
                    outcome = Outcome.STALE_AFTER_ATTEMPT if unconfirmed else Outcome.STALE
                    return CallbackResult(outcome, call, status.name, e.message, tries)
                if status == RPCStatusCode.INVALID_ARGUMENT:
                    return CallbackResult(Outcome.REJECTED, call, status.name, e.message, tries)
                grpc_status, detail = status.name, e.message
            except Exception as e:  # Connection failures, timeouts: transient.
                grpc_status, detail = type(e).__name__, str(e)
            else:
                return CallbackResult(Outcome.DELIVERED, call, "OK", "", tries)
            # Transient: the call may or may not have reached Temporal.
            unconfirmed = True
            if tries >= self.policy.max_tries:
                return CallbackResult(Outcome.PARKED, call, grpc_status, detail, tries)
            logger.info(
                "callback for %s (token %s): %s %s, retrying (try %d of %d)",
                execution.id,
                redact_token(token),
                grpc_status,
                detail,
                tries,
                self.policy.max_tries,
            )
            await asyncio.sleep(self.policy.backoff(tries))

    async def _call(
        self, token: bytes, call: Call, resource: Message, outcome: Execution.Completed
    ) -> None:
        handle = self.client.get_async_activity_handle(task_token=token)
        timeout = self.policy.rpc_timeout
        if call is Call.COMPLETE:
            await handle.complete(resource, rpc_timeout=timeout)
        elif call is Call.FAIL:
            error = outcome.error or {}
            await handle.fail(
                ApplicationError(
                    error.get("message") or "execution failed",
                    resource,
                    type=error.get("type") or DEFAULT_ERROR_TYPE,
                    non_retryable=True,
                ),
                rpc_timeout=timeout,
            )
        elif call is Call.REPORT_CANCELLATION:
            try:
                await handle.report_cancellation(resource, rpc_timeout=timeout)
            except RPCError as e:
                if _cancellation_not_requested(e):
                    raise _CancellationNotRequestedError from e
                raise
        else:
            await handle.fail(
                ApplicationError(
                    outcome.reason or "execution cancelled",
                    resource,
                    type=CANCELLED_ERROR_TYPE,
                    non_retryable=True,
                ),
                rpc_timeout=timeout,
            )


class _CancellationNotRequestedError(Exception):
    """Temporal refused ``report_cancellation``: the caller had not asked to cancel."""


def _cancellation_not_requested(error: RPCError) -> bool:
    """Temporal's refusal to cancel an activity whose caller did not ask to cancel."""
    return (
        error.status
        in (
            RPCStatusCode.FAILED_PRECONDITION,
            RPCStatusCode.INVALID_ARGUMENT,
        )
        and "request cancel" in error.message.lower()
    )
