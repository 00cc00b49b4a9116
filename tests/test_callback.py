"""Unit tests of CallbackSender: what each Temporal answer becomes.

A fake client hands out a fake async-activity handle that answers each call from
a script (an exception to raise, or ``None`` for success) and records what it
was called with. The answers are the ones the real server gives (seen in the
end-to-end tests): NOT_FOUND for a token Temporal no longer knows,
INVALID_ARGUMENT for a token that does not deserialize, INVALID_ARGUMENT
"unable to mark activity as canceled without activity being request canceled
first" for a cancellation nobody asked for, UNAVAILABLE while it is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from ledger.api.commons.v1.execution_value_pb2 import ExecutionValue
from ledger.application import Ledger, open_ledger
from ledger.contract.kinds import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    WorkflowExecution,
    WorkflowExecutionSpec,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.domain.sealing import ENCRYPTED_PREFIX
from projections.dispatch.calls import (
    CANCELLED_ERROR_TYPE,
    CallbackResult,
    CallbackSender,
    RetryPolicy,
    call_for,
    final_resource,
)
from projections.dispatch.delivery import Call, Outcome
from tests.support.builders import agent_execution

TOKEN = b"\x0a\x24task-token-bytes\x00\xff" * 8
POLICY = RetryPolicy(
    max_tries=4, initial_backoff=0.02, max_backoff=0.05, rpc_timeout=timedelta(seconds=3)
)

NOT_FOUND = RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")
GARBAGE = RPCError("Error deserializing task token.", RPCStatusCode.INVALID_ARGUMENT, b"")
DOWN = RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")
NOT_REQUESTED = RPCError(
    "unable to mark activity as canceled without activity being request canceled first",
    RPCStatusCode.INVALID_ARGUMENT,
    b"",
)


@dataclass
class Sent:
    method: str
    token: bytes
    argument: Any
    rpc_timeout: timedelta | None
    at: float


@dataclass
class FakeTemporal:
    """A client whose async-activity handles answer from ``script``, in order."""

    script: list[BaseException | None] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    def get_async_activity_handle(self, *, task_token: bytes) -> FakeHandle:
        return FakeHandle(self, task_token)

    @property
    def client(self) -> Client:
        return cast(Client, self)

    @property
    def methods(self) -> list[str]:
        return [s.method for s in self.sent]


@dataclass
class FakeHandle:
    temporal: FakeTemporal
    token: bytes

    async def complete(self, result: Any, *, rpc_timeout: timedelta | None = None) -> None:
        self._answer("complete", result, rpc_timeout)

    async def fail(
        self,
        error: Exception,
        *,
        last_heartbeat_details: Sequence[Any] = [],
        rpc_timeout: timedelta | None = None,
    ) -> None:
        self._answer("fail", error, rpc_timeout)

    async def report_cancellation(
        self, *details: Any, rpc_timeout: timedelta | None = None
    ) -> None:
        self._answer("report_cancellation", details, rpc_timeout)

    def _answer(self, method: str, argument: Any, rpc_timeout: timedelta | None) -> None:
        self.temporal.sent.append(Sent(method, self.token, argument, rpc_timeout, time.monotonic()))
        assert self.temporal.script, f"unexpected call {method}"
        answer = self.temporal.script.pop(0)
        if answer is not None:
            raise answer


@pytest.fixture
def ledger() -> Ledger:
    return open_ledger("memory://")


def completed(
    ledger: Ledger, phase: Phase = Phase.COMPLETED, *, token: bytes = TOKEN, workflow: bool = False
) -> Execution:
    """An execution recorded with ``token`` and ended in ``phase``."""
    resource: AgentExecution | WorkflowExecution
    if workflow:
        resource = WorkflowExecution(
            spec=WorkflowExecutionSpec(workflow_id="flow", callback_token=token)
        )
    else:
        resource = AgentExecution(
            spec=AgentExecutionSpec(
                agent_id="agent",
                message="go",
                callback_token=token,
                runtime_env={
                    "API_KEY": ExecutionValue(value="s3cret", is_secret=True),
                    "REGION": ExecutionValue(value="eu-west-1"),
                },
            )
        )
    execution_id = ledger.create(resource).id
    if phase is Phase.COMPLETED:
        ledger.complete(execution_id, {"answer": 42})
    elif phase is Phase.FAILED:
        ledger.fail(execution_id, "the tool crashed", error_type="ToolCrashed", details={"k": 1})
    else:
        ledger.cancel(execution_id, "stopped by the operator")
    return cast(Execution, ledger.repository.get(execution_id))


def send(
    temporal: FakeTemporal,
    execution: Execution,
    *,
    unconfirmed: bool = False,
    policy: RetryPolicy = POLICY,
) -> CallbackResult:
    sender = CallbackSender(temporal.client, policy)
    return asyncio.run(
        sender.send(execution, execution.callback_token, earlier_attempt_unconfirmed=unconfirmed)
    )


# Delivered: which call, with what.


def test_completed_completes_with_the_final_resource(ledger: Ledger) -> None:
    execution = completed(ledger)
    temporal = FakeTemporal([None])
    result = send(temporal, execution)
    assert (result.outcome, result.call, result.grpc_status, result.tries) == (
        Outcome.DELIVERED,
        Call.COMPLETE,
        "OK",
        1,
    )
    (sent,) = temporal.sent
    assert sent.method == "complete"
    assert sent.token == TOKEN
    assert sent.rpc_timeout == POLICY.rpc_timeout
    assert sent.argument == final_resource(execution)
    assert sent.argument.spec.callback_token == b""
    assert sent.argument.status.phase == Phase.COMPLETED


def test_failed_fails_with_a_typed_non_retryable_error_carrying_the_resource(
    ledger: Ledger,
) -> None:
    execution = completed(ledger, Phase.FAILED, workflow=True)
    temporal = FakeTemporal([None])
    result = send(temporal, execution)
    assert (result.outcome, result.call) == (Outcome.DELIVERED, Call.FAIL)
    (sent,) = temporal.sent
    error = sent.argument
    assert isinstance(error, ApplicationError)
    assert error.type == "ToolCrashed"
    assert error.message == "the tool crashed"
    assert error.non_retryable
    assert error.details == (final_resource(execution),)
    assert isinstance(error.details[0], WorkflowExecution)
    assert Phase(error.details[0].status.phase) is Phase.FAILED


def test_failed_by_status_patch_has_the_default_error_type(ledger: Ledger) -> None:
    execution_id = ledger.create(agent_execution(agent_id="a", message="m", token=TOKEN)).id
    ledger.update_status(
        execution_id,
        AgentExecutionStatus(phase=Phase.FAILED, error="it broke"),  # type: ignore[arg-type]
    )
    temporal = FakeTemporal([None])
    send(temporal, cast(Execution, ledger.repository.get(execution_id)))
    error = temporal.sent[0].argument
    assert isinstance(error, ApplicationError)
    assert (error.type, error.message) == ("ExecutionFailed", "it broke")


def test_cancelled_reports_cancellation_when_the_caller_asked(ledger: Ledger) -> None:
    execution = completed(ledger, Phase.CANCELLED)
    temporal = FakeTemporal([None])
    result = send(temporal, execution)
    assert (result.outcome, result.call) == (Outcome.DELIVERED, Call.REPORT_CANCELLATION)
    (sent,) = temporal.sent
    assert sent.method == "report_cancellation"
    assert sent.argument == (final_resource(execution),)
    assert sent.rpc_timeout == POLICY.rpc_timeout


def test_cancellation_refused_fails_with_execution_cancelled(ledger: Ledger) -> None:
    execution = completed(ledger, Phase.CANCELLED)
    temporal = FakeTemporal([NOT_REQUESTED, None])
    result = send(temporal, execution)
    assert (result.outcome, result.call, result.tries) == (
        Outcome.DELIVERED,
        Call.FAIL_CANCELLED,
        1,
    )
    assert temporal.methods == ["report_cancellation", "fail"]
    error = temporal.sent[1].argument
    assert isinstance(error, ApplicationError)
    assert error.type == CANCELLED_ERROR_TYPE == "ExecutionCancelled"
    assert error.message == "stopped by the operator"
    assert error.non_retryable
    assert error.details == (final_resource(execution),)
    assert temporal.sent[1].rpc_timeout == POLICY.rpc_timeout


def test_cancellation_refused_then_the_fail_is_stale(ledger: Ledger) -> None:
    execution = completed(ledger, Phase.CANCELLED)
    temporal = FakeTemporal([NOT_REQUESTED, NOT_FOUND])
    result = send(temporal, execution)
    assert (result.outcome, result.call) == (Outcome.STALE, Call.FAIL_CANCELLED)


def test_cancellation_of_a_gone_caller_is_stale_without_a_second_call(ledger: Ledger) -> None:
    execution = completed(ledger, Phase.CANCELLED)
    temporal = FakeTemporal([NOT_FOUND])
    result = send(temporal, execution)
    assert (result.outcome, result.call) == (Outcome.STALE, Call.REPORT_CANCELLATION)
    assert temporal.methods == ["report_cancellation"]


# Final answers: stale, stale_after_attempt, rejected.


def test_not_found_is_stale_with_temporals_answer(ledger: Ledger) -> None:
    temporal = FakeTemporal([NOT_FOUND])
    result = send(temporal, completed(ledger))
    assert result.outcome is Outcome.STALE
    assert result.grpc_status == "NOT_FOUND"
    assert result.detail == "workflow execution already completed"
    assert len(temporal.sent) == 1


def test_not_found_after_an_unconfirmed_earlier_attempt_is_stale_after_attempt(
    ledger: Ledger,
) -> None:
    temporal = FakeTemporal([NOT_FOUND])
    result = send(temporal, completed(ledger), unconfirmed=True)
    assert result.outcome is Outcome.STALE_AFTER_ATTEMPT
    assert result.grpc_status == "NOT_FOUND"
    assert len(temporal.sent) == 1


@pytest.mark.parametrize(
    "transient",
    [
        DOWN,
        RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b""),
        TimeoutError("timed out"),
        ConnectionResetError("reset by peer"),
    ],
    ids=["unavailable", "deadline_exceeded", "timeout", "connection_reset"],
)
def test_not_found_after_a_transient_try_is_stale_after_attempt(
    ledger: Ledger, transient: BaseException
) -> None:
    """The transient try may have reached Temporal: its NOT_FOUND is ambiguous."""
    temporal = FakeTemporal([transient, NOT_FOUND])
    result = send(temporal, completed(ledger))
    assert result.outcome is Outcome.STALE_AFTER_ATTEMPT
    assert result.tries == 2
    assert temporal.methods == ["complete", "complete"]


def test_invalid_argument_is_rejected_at_once(ledger: Ledger) -> None:
    temporal = FakeTemporal([GARBAGE])
    result = send(temporal, completed(ledger, token=b"not-a-token"))
    assert result.outcome is Outcome.REJECTED
    assert result.grpc_status == "INVALID_ARGUMENT"
    assert result.detail == "Error deserializing task token."
    assert [s.token for s in temporal.sent] == [b"not-a-token"]


# Transient failures: bounded retries with backoff, then parked.


def test_unavailable_repeated_is_parked_after_exactly_max_tries_with_backoff(
    ledger: Ledger,
) -> None:
    temporal = FakeTemporal([DOWN] * 10)
    result = send(temporal, completed(ledger))
    assert result.outcome is Outcome.PARKED
    assert (result.grpc_status, result.detail) == ("UNAVAILABLE", "tcp connect error")
    assert result.tries == POLICY.max_tries == 4
    assert len(temporal.sent) == 4
    assert len(temporal.script) == 6  # No call after the last try.
    gaps = [b.at - a.at for a, b in zip(temporal.sent, temporal.sent[1:], strict=False)]
    for tries, gap in enumerate(gaps, start=1):
        assert gap >= POLICY.backoff(tries) * 0.95, (tries, gaps)
    assert [POLICY.backoff(t) for t in (1, 2, 3)] == pytest.approx([0.02, 0.04, 0.05])


def test_a_transient_failure_then_success_is_delivered(ledger: Ledger) -> None:
    temporal = FakeTemporal([DOWN, DOWN, None])
    result = send(temporal, completed(ledger))
    assert (result.outcome, result.tries, result.grpc_status) == (Outcome.DELIVERED, 3, "OK")


def test_one_try_policy_parks_at_once(ledger: Ledger) -> None:
    temporal = FakeTemporal([DOWN, None])
    result = send(temporal, completed(ledger), policy=RetryPolicy(max_tries=1))
    assert (result.outcome, result.tries) == (Outcome.PARKED, 1)
    assert len(temporal.sent) == 1


def test_a_client_that_cannot_connect_is_transient(ledger: Ledger) -> None:
    """A lazily connected client (``Client.connect(..., lazy=True)``) with Temporal
    unreachable raises ``RuntimeError("Failed client connect: ...")`` on its first
    call (seen against a closed port), not an RPCError. That is Temporal being
    unreachable: it must be retried and parked, not escape the sender (which
    leaves the delivery in flight and the dispatcher's position stuck)."""
    failed_connect = RuntimeError(
        "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
        'ConnectError("tcp connect error", 127.0.0.1:1, Connection refused))'
    )
    temporal = FakeTemporal([failed_connect] * POLICY.max_tries)
    result = send(temporal, completed(ledger))
    assert result.outcome is Outcome.PARKED
    assert len(temporal.sent) == POLICY.max_tries


def test_retry_policy_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(t) for t in range(1, 8)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )


# The final resource.


def test_final_resource_clears_the_token_and_blanks_secrets(ledger: Ledger) -> None:
    execution = completed(ledger)
    final: Any = final_resource(execution)
    assert isinstance(final, AgentExecution)
    assert final.spec.callback_token == b""
    assert final.spec.runtime_env["API_KEY"].value == ""
    assert final.spec.runtime_env["API_KEY"].is_secret
    assert final.spec.runtime_env["REGION"].value == "eu-west-1"
    assert final.metadata.id == execution.id
    assert Phase(final.status.phase) is Phase.COMPLETED
    assert final.spec.agent_id == "agent"
    # The execution itself is untouched (its secret value stays sealed by the vault).
    spec: Any = execution.resource.spec
    assert execution.callback_token == TOKEN
    assert spec.runtime_env["API_KEY"].value.startswith(ENCRYPTED_PREFIX)
    assert "s3cret" not in spec.runtime_env["API_KEY"].value


def test_final_resource_of_a_workflow_execution_keeps_its_output(ledger: Ledger) -> None:
    execution = completed(ledger, workflow=True)
    final: Any = final_resource(execution)
    assert isinstance(final, WorkflowExecution)
    assert final.spec.callback_token == b""
    assert final.status.output["answer"] == 42
    assert execution.callback_token == TOKEN


def test_call_for_each_terminal_phase() -> None:
    assert call_for(Phase.COMPLETED) is Call.COMPLETE
    assert call_for(Phase.FAILED) is Call.FAIL
    assert call_for(Phase.CANCELLED) is Call.REPORT_CANCELLATION
    with pytest.raises(KeyError):
        call_for(Phase.IN_PROGRESS)
