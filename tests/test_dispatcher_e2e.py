"""End to end: the ledger, the completion dispatcher and a real Temporal dev server.

Every test here runs real workflows (``tests/e2e_flows.py``,
``tests/e2e_cancel_flows.py``) on a worker whose activities record an execution
carrying their own task token, drives the execution through the Ledger API, runs
the :class:`~projections.dispatch.dispatcher.Dispatcher`, and checks both sides: what the
waiting workflow received (Temporal's own history, not only the ledger's
records) and what the dispatcher's log recorded.

The session's dev server (``temporal_env``) runs on an event loop of its own, so
each test makes its own client under ``asyncio.run``. Temporal "going down" is a
TCP proxy in front of the dev server that the test closes and reopens.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

import psycopg
import pytest
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import Tracking
from google.protobuf.struct_pb2 import Struct
from psycopg import sql
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.client import WorkflowExecutionStatus as RunStatus
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RetryConfig
from temporalio.worker import Worker

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.api.workflowexecution.v1.status_pb2 import WorkflowTask
from ledger.application import Ledger, open_ledger
from ledger.contract.errors import ExecutionNotFoundError, StoreUnavailableError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    Kind,
    Resource,
    WorkflowExecutionStatus,
)
from ledger.contract.names import LEDGER_LOG
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.store.url import parse_url
from ledger.temporal.caller import ExecutionActivities, execution_id_for
from projections.dispatch.calls import CallbackResult, RetryPolicy, final_resource
from projections.dispatch.delivery import Call, Delivery, Outcome
from projections.dispatch.dispatcher import Dispatcher
from projections.dispatch.log import DispatcherLog
from tests.e2e_cancel_flows import (
    BriefAgentExecution,
    CancellableAgentExecution,
    ManyAgentExecutions,
)
from tests.e2e_flows import AwaitAgentExecution, AwaitWorkflowExecution
from tests.support.builders import agent_execution, workflow_execution
from tests.support.waiting import wait_for

pytestmark = pytest.mark.temporal

T = TypeVar("T")

SCENARIO_TIMEOUT = 60.0
RESULT_TIMEOUT = 20.0
WORKFLOWS = [
    AwaitAgentExecution,
    AwaitWorkflowExecution,
    CancellableAgentExecution,
    BriefAgentExecution,
    ManyAgentExecutions,
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs one scenario on an event loop of its own, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, SCENARIO_TIMEOUT))


# The world of one test.


@dataclass
class Caller:
    """A workflow waiting for one execution."""

    handle: WorkflowHandle[Any, Any]
    execution_id: str


@dataclass
class World:
    url: str
    client: Client
    ledger: Ledger
    task_queue: str
    dispatchers: list[Dispatcher] = field(default_factory=list)
    logs: list[DispatcherLog] = field(default_factory=list)

    def dispatcher(self, client: Client | None = None, **options: Any) -> Dispatcher:
        options.setdefault("poll_interval", 0.05)
        dispatcher = Dispatcher(parse_url(self.url), client or self.client, **options)
        self.dispatchers.append(dispatcher)
        return dispatcher

    def log(self) -> DispatcherLog:
        """A fresh view of the dispatcher's log (what a restarted process would read)."""
        log = DispatcherLog(parse_url(self.url).component_env("dispatcher"))
        self.logs.append(log)
        return log

    async def start(
        self, workflow: str, resource: Resource, kind: Kind = AGENT_EXECUTION
    ) -> Caller:
        """Starts ``workflow`` and waits until its execution is in the ledger."""
        workflow_id = f"wf-{uuid.uuid4().hex}"
        handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
            workflow, resource, id=workflow_id, task_queue=self.task_queue
        )
        run_id = handle.result_run_id
        assert run_id is not None
        execution_id = execution_id_for(kind, workflow_id, run_id, "1", 1)
        await self.recorded(execution_id)
        return Caller(handle, execution_id)

    async def start_agent(self, workflow: str = "AwaitAgentExecution") -> Caller:
        return await self.start(workflow, agent_execution())

    async def recorded(self, execution_id: str, timeout: float = 60.0) -> None:
        """Waits until the ledger has ``execution_id`` (the caller activity recorded it).

        A loop of its own, not :func:`wait_for` in a thread: many callers wait at once
        (``asyncio.gather``), and each would hold a worker thread of the default
        executor, which the activities need too."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.to_thread(self.ledger.read, execution_id)
                return
            except ExecutionNotFoundError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)


@asynccontextmanager
async def world(url: str, address: str) -> AsyncIterator[World]:
    """A client, the ledger at ``url`` and a worker on a task queue of its own."""
    client = await Client.connect(address)
    ledger = open_ledger(url)
    w = World(url, client, ledger, f"q-{uuid.uuid4().hex}")
    try:
        async with Worker(
            client,
            task_queue=w.task_queue,
            workflows=WORKFLOWS,
            activities=ExecutionActivities(ledger).all(),
            max_concurrent_activities=200,
        ):
            yield w
    finally:
        for dispatcher in w.dispatchers:
            dispatcher.close()
        for log in w.logs:
            log.close()
        ledger.close()


# Reading both sides.


async def activity_events(handle: WorkflowHandle[Any, Any]) -> Counter[str]:
    """How the caller's activities ended, from Temporal's history of the workflow."""
    history = await handle.fetch_history()
    names = Counter(EventType.Name(event.event_type) for event in history.events)
    prefix = "EVENT_TYPE_ACTIVITY_TASK_"
    return Counter({k.removeprefix(prefix): v for k, v in names.items() if k.startswith(prefix)})


def delivery_events(log: DispatcherLog, execution_id: str) -> list[Delivery.Event]:
    return [cast(Delivery.Event, e) for e in log.events.get(execution_id)]


def event_names(log: DispatcherLog, execution_id: str) -> list[str]:
    return [type(e).__name__ for e in delivery_events(log, execution_id)]


def delivered_call(log: DispatcherLog, execution_id: str) -> str:
    (delivered,) = [
        e for e in delivery_events(log, execution_id) if isinstance(e, Delivery.Delivered)
    ]
    return delivered.call


def log_size(log: DispatcherLog) -> int:
    return len(log.recorder.select_notifications(start=1, limit=1_000_000))


def count_calls(dispatcher: Dispatcher) -> list[str]:
    """Wraps the dispatcher's sender: every call it makes to Temporal is listed."""
    calls: list[str] = []
    send = dispatcher.sender.send

    async def counting(execution: Execution, token: bytes, **kwargs: Any) -> CallbackResult:
        calls.append(execution.id)
        return await send(execution, token, **kwargs)

    dispatcher.sender.send = counting  # type: ignore[method-assign]
    return calls


async def result_of(caller: Caller) -> Any:
    return await asyncio.wait_for(caller.handle.result(), RESULT_TIMEOUT)


async def failure_of(caller: Caller) -> ApplicationError:
    """The ApplicationError a failed caller's activity ended with."""
    with pytest.raises(WorkflowFailureError) as raised:
        await result_of(caller)
    activity_error = raised.value.cause
    assert isinstance(activity_error, ActivityError), activity_error
    application_error = activity_error.cause
    assert isinstance(application_error, ApplicationError), application_error
    return application_error


# Temporal going down and coming back: a TCP proxy in front of the dev server.


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the dev server until :meth:`stop`; :meth:`start` again."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host, int(port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def proxied_client(proxy: TcpProxy) -> Client:
    """A client through ``proxy`` that gives up quickly when it is down."""
    return await Client.connect(
        proxy.address,
        retry_config=RetryConfig(initial_interval_millis=20, max_interval_millis=50, max_retries=1),
    )


FAST_RETRY = RetryPolicy(
    max_tries=3, initial_backoff=0.05, max_backoff=0.1, rpc_timeout=timedelta(seconds=2)
)


# Fixtures.


@pytest.fixture(params=["agent", "workflow"])
def kind(request: pytest.FixtureRequest) -> Kind:
    return AGENT_EXECUTION if request.param == "agent" else WORKFLOW_EXECUTION


# 1. Both kinds x all three outcomes, on both stores.


OUTPUT: dict[str, Any] = {"answer": 42, "sources": ["a", "b"], "nested": {"ok": True}}


def drive(ledger: Ledger, kind: Kind, execution_id: str, outcome: Phase) -> None:
    """Status updates, then complete / fail / cancel, through the Ledger API."""
    if kind is AGENT_EXECUTION:
        ledger.update_status(
            execution_id,
            AgentExecutionStatus(
                phase=Phase.IN_PROGRESS,  # type: ignore[arg-type]
                messages=[AgentMessage(type=MESSAGE_AI, content="thinking")],
            ),
        )
        ledger.update_status(
            execution_id,
            AgentExecutionStatus(messages=[AgentMessage(type=MESSAGE_AI, content="done")]),
        )
    else:
        ledger.update_status(
            execution_id,
            WorkflowExecutionStatus(
                phase=Phase.IN_PROGRESS,  # type: ignore[arg-type]
                temporal_workflow_id="inner-run",
                tasks=[WorkflowTask(task_id="t1", task_name="fetch")],
            ),
        )
    if outcome is Phase.COMPLETED:
        ledger.complete(execution_id, OUTPUT)
    elif outcome is Phase.FAILED:
        ledger.fail(execution_id, "the tool crashed", error_type="ToolCrashed", details={"k": 1})
    else:
        ledger.cancel(execution_id, "the operator stopped it")


def check_final(
    kind: Kind, final: Any, execution_id: str, phase: Phase, *, driven: bool = True
) -> None:
    """``final`` is the typed final resource: status present, token cleared.

    ``driven``: the execution went through :func:`drive`'s status updates."""
    assert isinstance(final, kind.resource_class), type(final)
    resource: Any = final
    assert resource.metadata.id == execution_id
    assert resource.kind == kind.name
    assert resource.HasField("status")
    assert resource.status.phase == phase
    assert resource.status.completed_at
    assert resource.spec.callback_token == b""
    if not driven:
        return
    assert resource.status.started_at
    if kind is AGENT_EXECUTION:
        assert resource.spec.agent_id == "agent-1"
        assert [m.content for m in resource.status.messages] == ["thinking", "done"]
    else:
        assert resource.spec.workflow_id == "flow-1"
        assert resource.status.temporal_workflow_id == "inner-run"
        assert [t.task_id for t in resource.status.tasks] == ["t1"]
        if phase is Phase.COMPLETED:
            expected = Struct()
            expected.update(OUTPUT)
            assert resource.status.output == expected


@pytest.mark.parametrize(
    "outcome", [Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED], ids=lambda p: p.name.lower()
)
def test_caller_receives_the_outcome(
    store_url: str, temporal_address: str, kind: Kind, outcome: Phase
) -> None:
    async def scenario() -> None:
        async with world(store_url, temporal_address) as w:
            if kind is AGENT_EXECUTION:
                caller = await w.start("AwaitAgentExecution", agent_execution(), kind)
            else:
                caller = await w.start(
                    "AwaitWorkflowExecution", workflow_execution(workflow_id="flow-1"), kind
                )
            recorded: Any = w.ledger.get(caller.execution_id)
            assert len(recorded.spec.callback_token) > 20  # The activity's own task token.
            drive(w.ledger, kind, caller.execution_id, outcome)

            dispatcher = w.dispatcher()
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"delivered": 1}

            if outcome is Phase.COMPLETED:
                check_final(kind, await result_of(caller), caller.execution_id, outcome)
                expected_call, closed = Call.COMPLETE, "COMPLETED"
            else:
                error = await failure_of(caller)
                assert error.non_retryable
                assert len(error.details) == 1
                check_final(kind, error.details[0], caller.execution_id, outcome)
                if outcome is Phase.FAILED:
                    assert error.type == "ToolCrashed"
                    assert error.message == "the tool crashed"
                    expected_call = Call.FAIL
                else:
                    assert error.type == "ExecutionCancelled"
                    assert error.message == "the operator stopped it"
                    expected_call = Call.FAIL_CANCELLED
                closed = "FAILED"
            events = await activity_events(caller.handle)
            assert events[closed] == 1
            assert sum(events[k] for k in ("COMPLETED", "FAILED", "CANCELED", "TIMED_OUT")) == 1

            log = dispatcher.log
            delivery = log.delivery(caller.execution_id)
            assert delivery is not None
            assert delivery.outcome is Outcome.DELIVERED
            assert delivery.phase == outcome
            assert delivery.kind == kind.name
            assert delivery.attempts == 1
            assert event_names(log, caller.execution_id) == ["Opened", "Attempted", "Delivered"]
            assert delivered_call(log, caller.execution_id) == expected_call.value
            assert log.position() == w.ledger.recorder.max_notification_id()

    run(scenario())


# 2. A caller that cancels its activity, then the execution is cancelled.


def test_caller_that_asked_to_cancel_sees_a_cancellation(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with world(sqlite_url, temporal_address) as w:
            caller = await w.start("CancellableAgentExecution", agent_execution())
            await caller.handle.signal("cancel")
            deadline = time.monotonic() + 10
            while (await activity_events(caller.handle))["CANCEL_REQUESTED"] == 0:
                assert time.monotonic() < deadline, "the cancel request never reached Temporal"
                await asyncio.sleep(0.05)
            w.ledger.cancel(caller.execution_id, "cancelled as the caller asked")

            dispatcher = w.dispatcher()
            assert (await dispatcher.run(until_caught_up=True)).outcomes == {"delivered": 1}

            final = await result_of(caller)  # Returned only from the CancelledError branch.
            check_final(AGENT_EXECUTION, final, caller.execution_id, Phase.CANCELLED, driven=False)
            events = await activity_events(caller.handle)
            assert events["CANCELED"] == 1
            assert events["FAILED"] == events["COMPLETED"] == 0
            assert delivered_call(dispatcher.log, caller.execution_id) == "report_cancellation"

    run(scenario())


# 3. Every outcome in the dispatcher's log.


def test_stale_when_the_caller_is_gone(store_url: str, temporal_address: str) -> None:
    async def scenario() -> None:
        async with world(store_url, temporal_address) as w:
            gone = await w.start_agent()
            waiting = await w.start_agent()
            await gone.handle.terminate("the caller gave up")
            w.ledger.complete(gone.execution_id)
            w.ledger.complete(waiting.execution_id)

            dispatcher = w.dispatcher()
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"stale": 1, "delivered": 1}
            delivery = dispatcher.log.delivery(gone.execution_id)
            assert delivery is not None
            assert delivery.outcome is Outcome.STALE
            stale = delivery_events(dispatcher.log, gone.execution_id)[-1]
            assert isinstance(stale, Delivery.Stale)
            assert stale.grpc_status == "NOT_FOUND"
            assert stale.detail
            # The dispatcher moved on: the one behind it was delivered.
            check_final(
                AGENT_EXECUTION,
                await result_of(waiting),
                waiting.execution_id,
                Phase.COMPLETED,
                driven=False,
            )
            assert dispatcher.log.position() == w.ledger.recorder.max_notification_id()

    run(scenario())


def test_stale_when_the_attempt_timed_out_and_the_retry_is_a_new_execution(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with world(sqlite_url, temporal_address) as w:
            first = await w.start("BriefAgentExecution", agent_execution())
            run_id = first.handle.result_run_id
            assert run_id is not None
            second_id = execution_id_for(AGENT_EXECUTION, first.handle.id, run_id, "1", attempt=2)
            await w.recorded(second_id)  # Attempt 1 timed out; attempt 2 is a new execution.
            w.ledger.complete(first.execution_id, {"late": True})
            w.ledger.complete(second_id, {"late": False})

            dispatcher = w.dispatcher()
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"stale": 1, "delivered": 1}
            first_delivery = dispatcher.log.delivery(first.execution_id)
            assert first_delivery is not None and first_delivery.outcome is Outcome.STALE
            final = await result_of(first)
            check_final(AGENT_EXECUTION, final, second_id, Phase.COMPLETED, driven=False)
            events = await activity_events(first.handle)
            assert events["TIMED_OUT"] == 0  # Retried, not closed: one completion in all.
            assert events["COMPLETED"] == 1

    run(scenario())


def test_rejected_and_no_callback_without_calling_twice(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with world(sqlite_url, temporal_address) as w:
            garbage = w.ledger.create(
                AgentExecution(
                    spec=AgentExecutionSpec(
                        agent_id="a", message="m", callback_token=b"not-a-token"
                    )
                )
            ).id
            nobody = w.ledger.create(agent_execution()).id
            w.ledger.complete(garbage)
            w.ledger.fail(nobody, "nobody waits for this")

            dispatcher = w.dispatcher()
            calls = count_calls(dispatcher)
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"rejected": 1, "no_callback": 1}
            assert calls == [garbage]  # No call at all for the empty token.

            log = dispatcher.log
            rejected = log.delivery(garbage)
            assert rejected is not None and rejected.outcome is Outcome.REJECTED
            last = delivery_events(log, garbage)[-1]
            assert isinstance(last, Delivery.Rejected)
            assert last.grpc_status == "INVALID_ARGUMENT"
            no_callback = log.delivery(nobody)
            assert no_callback is not None and no_callback.outcome is Outcome.NO_CALLBACK
            assert not no_callback.has_callback
            assert event_names(log, nobody) == ["Opened", "NoCallback"]

            again = w.dispatcher()
            again_calls = count_calls(again)
            await again.run(until_caught_up=True)
            assert again_calls == []

    run(scenario())


def test_parked_while_temporal_is_down_then_retry_parked_delivers(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        proxy = TcpProxy(temporal_address)
        await proxy.start()
        async with world(sqlite_url, temporal_address) as w:
            through_proxy = await proxied_client(proxy)
            caller = await w.start_agent()
            w.ledger.complete(caller.execution_id, {"n": 1})
            behind = w.ledger.create(agent_execution()).id
            w.ledger.complete(behind)
            await proxy.stop()

            dispatcher = w.dispatcher(through_proxy, retry=FAST_RETRY)
            calls = count_calls(dispatcher)
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"parked": 1, "no_callback": 1}
            parked = dispatcher.log.delivery(caller.execution_id)
            assert parked is not None and parked.outcome is Outcome.PARKED
            last = delivery_events(dispatcher.log, caller.execution_id)[-1]
            assert isinstance(last, Delivery.Parked)
            assert last.grpc_status == "UNAVAILABLE"
            # Nothing behind the parked one is held up: the position passed both.
            assert dispatcher.log.position() == w.ledger.recorder.max_notification_id()
            description = await caller.handle.describe()
            assert description.status == RunStatus.RUNNING
            assert calls == [caller.execution_id]

            await proxy.start()  # Temporal is back.
            assert await dispatcher.retry_parked() == 1
            check_final(
                AGENT_EXECUTION,
                await result_of(caller),
                caller.execution_id,
                Phase.COMPLETED,
                driven=False,
            )
            log = w.log()
            assert event_names(log, caller.execution_id) == [
                "Opened",
                "Attempted",
                "Parked",
                "Attempted",
                "Delivered",
            ]
            assert (await activity_events(caller.handle))["COMPLETED"] == 1
            assert await dispatcher.retry_parked() == 0
        await proxy.stop()

    run(scenario())


def test_a_retry_of_a_parked_delivery_cut_off_before_its_outcome_is_retried(
    sqlite_url: str, temporal_address: str
) -> None:
    """A retry of a parked delivery recorded its attempt, then the process died (or
    lost its lock) before the outcome: the position is long past that completion,
    so only the retry of parked deliveries can find it, and it does."""

    async def scenario() -> None:
        proxy = TcpProxy(temporal_address)
        await proxy.start()
        async with world(sqlite_url, temporal_address) as w:
            through_proxy = await proxied_client(proxy)
            caller = await w.start_agent()
            w.ledger.complete(caller.execution_id)
            await proxy.stop()
            dispatcher = w.dispatcher(through_proxy, retry=FAST_RETRY)
            assert (await dispatcher.run(until_caught_up=True)).outcomes == {"parked": 1}
            # The cut-off retry: its attempt recorded, no call, no outcome.
            delivery = dispatcher.log.delivery(caller.execution_id)
            assert delivery is not None
            delivery.attempt(Call.COMPLETE)
            dispatcher.log.record([delivery])
            assert dispatcher.log.deliveries_in(Outcome.PARKED) == []

            await proxy.start()
            again = w.dispatcher(through_proxy)
            calls = count_calls(again)
            assert await again.retry_parked() == 1
            await result_of(caller)
            assert calls == [caller.execution_id]
            assert event_names(w.log(), caller.execution_id) == [
                "Opened",
                "Attempted",
                "Parked",
                "Attempted",
                "Attempted",
                "Delivered",
            ]
            assert await again.retry_parked() == 0
        await proxy.stop()

    run(scenario())


def test_stopping_a_retry_of_parked_deliveries_starts_no_new_call(
    sqlite_url: str, temporal_address: str
) -> None:
    """stop() while parked deliveries are being retried one at a time: the call in
    flight ends and is recorded, no other starts; the rest stay attempted and the
    next retry delivers them, each caller woken once."""

    async def scenario() -> None:
        proxy = TcpProxy(temporal_address)
        await proxy.start()
        async with world(sqlite_url, temporal_address) as w:
            through_proxy = await proxied_client(proxy)
            callers = [await w.start_agent() for _ in range(4)]
            for caller in callers:
                w.ledger.complete(caller.execution_id)
            await proxy.stop()
            parking = w.dispatcher(through_proxy, retry=FAST_RETRY)
            assert (await parking.run(until_caught_up=True)).outcomes == {"parked": 4}
            await proxy.start()

            retrying = w.dispatcher(through_proxy, max_in_flight=1)
            calls = count_calls(retrying)
            send = retrying.sender.send

            async def stopping(execution: Execution, token: bytes, **kwargs: Any) -> CallbackResult:
                retrying.stop()  # Asked to stop while this first call is in flight.
                return await send(execution, token, **kwargs)

            retrying.sender.send = stopping  # type: ignore[method-assign]
            assert await retrying.retry_parked() == 1
            assert len(calls) == 1
            log = w.log()
            first = log.delivery(calls[0])
            assert first is not None and first.outcome is Outcome.DELIVERED
            rest = [c.execution_id for c in callers if c.execution_id != calls[0]]
            for execution_id in rest:
                assert event_names(log, execution_id)[-1] == "Attempted"

            again = w.dispatcher(through_proxy)
            again_calls = count_calls(again)
            assert await again.retry_parked() == 3
            assert sorted(again_calls) == sorted(rest)
            for caller in callers:
                await result_of(caller)
                assert (await activity_events(caller.handle))["COMPLETED"] == 1
        await proxy.stop()

    run(scenario())


def test_a_lock_lost_while_the_first_start_waits_for_the_store_stands_by(
    pg_url: str, temporal_address: str
) -> None:
    """The first run took the lock, then the store failed its start-up read and the
    lock was lost meanwhile (a server restart): the run stands by, takes the lock
    again and delivers, instead of failing."""

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            caller = await w.start_agent()
            w.ledger.complete(caller.execution_id)
            dispatcher = w.dispatcher(lock_check_interval=0.05)
            start_position = dispatcher._start_position
            held = dispatcher.leadership.lock.held
            failures = 0

            def failing_start() -> int:
                nonlocal failures
                if failures < 3:
                    failures += 1
                    raise StoreUnavailableError("the store is restarting")
                return start_position()

            checks = 0

            def lost_once() -> bool:
                nonlocal checks
                checks += 1
                return checks > 1 and held()

            dispatcher._start_position = failing_start  # type: ignore[method-assign]
            dispatcher.leadership.lock.held = lost_once  # type: ignore[method-assign]
            stats = await dispatcher.run(until_caught_up=True)
            assert stats.outcomes == {"delivered": 1}
            assert checks >= 1 and failures == 3
            await result_of(caller)

    run(scenario())


def test_a_standby_dispatcher_stops_when_asked(pg_url: str, temporal_address: str) -> None:
    """stop() ends a run that is still waiting for the single-active lock."""

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            active = w.dispatcher(poll_interval=0.1)
            standby = w.dispatcher(poll_interval=0.1)
            running = asyncio.create_task(active.run())
            await lock_taken(w.url)
            waiting = asyncio.create_task(standby.run())
            await asyncio.sleep(0.5)
            assert not waiting.done()
            standby.stop()
            stats = await asyncio.wait_for(waiting, 5)
            assert stats.outcomes == {} and stats.skipped == 0
            active.stop()
            w.ledger.create(agent_execution())  # A NOTIFY ends the wait at once.
            await asyncio.wait_for(running, 10)

    run(scenario())


def test_temporal_stopped_while_completions_arrive_then_started_again(
    store_url: str, temporal_address: str
) -> None:
    """The issue's scenario: parked while down, all delivered on the next start."""

    async def scenario() -> None:
        proxy = TcpProxy(temporal_address)
        await proxy.start()
        async with world(store_url, temporal_address) as w:
            through_proxy = await proxied_client(proxy)
            callers = [await w.start_agent() for _ in range(3)]
            live = w.dispatcher(through_proxy, retry=FAST_RETRY, poll_interval=0.1)
            running = asyncio.create_task(live.run())
            await proxy.stop()
            for caller in callers:
                w.ledger.complete(caller.execution_id)
            deadline = time.monotonic() + 20
            log = w.log()
            while len(log.deliveries_in(Outcome.PARKED)) < len(callers):
                assert time.monotonic() < deadline, "the deliveries were never parked"
                await asyncio.sleep(0.1)
            live.stop()
            await asyncio.wait_for(running, 10)

            await proxy.start()
            restarted = w.dispatcher(through_proxy, retry=FAST_RETRY)
            stats = await restarted.run(until_caught_up=True)
            assert stats.outcomes == {"delivered": len(callers)}
            for caller in callers:
                check_final(
                    AGENT_EXECUTION,
                    await result_of(caller),
                    caller.execution_id,
                    Phase.COMPLETED,
                    driven=False,
                )
                assert (await activity_events(caller.handle))["COMPLETED"] == 1
                assert event_names(log, caller.execution_id).count("Delivered") == 1
        await proxy.stop()

    run(scenario())


def test_stale_after_attempt_when_a_crash_cut_off_the_record(
    store_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with world(store_url, temporal_address) as w:
            caller = await w.start_agent()
            w.ledger.complete(caller.execution_id, {"n": 1})
            crashed = w.dispatcher()
            execution = cast(Execution, crashed.ledger.repository.get(caller.execution_id))
            assert execution.outcome is not None
            # What a dispatcher killed between Temporal's answer and its record leaves:
            # Opened and Attempted recorded, the call accepted, no outcome, no position.
            delivery = Delivery.open(
                caller.execution_id,
                kind=execution.kind_name,
                phase=execution.outcome.phase,
                completed_at=execution.outcome.timestamp,
                has_callback=True,
                ledger_position=w.ledger.recorder.max_notification_id() or 0,
            )
            delivery.attempt(Call.COMPLETE)
            crashed.log.record([delivery])
            handle = w.client.get_async_activity_handle(task_token=execution.callback_token)
            await handle.complete(final_resource(execution))

            restarted = w.dispatcher()
            stats = await restarted.run(until_caught_up=True)
            assert stats.outcomes == {"stale_after_attempt": 1}
            recorded = restarted.log.delivery(caller.execution_id)
            assert recorded is not None
            assert recorded.outcome is Outcome.STALE_AFTER_ATTEMPT
            assert recorded.attempts == 2
            assert recorded.unconfirmed_attempts == 1
            # The caller completed once, with the final resource.
            check_final(
                AGENT_EXECUTION,
                await result_of(caller),
                caller.execution_id,
                Phase.COMPLETED,
                driven=False,
            )
            assert (await activity_events(caller.handle))["COMPLETED"] == 1

    run(scenario())


def test_a_parked_delivery_that_got_through_is_stale_after_attempt(
    sqlite_url: str, temporal_address: str
) -> None:
    """Parked after timeouts: the call may have reached Temporal (the sender itself
    treats every transient failure as unconfirmed). When the retry then hears
    NOT_FOUND, that is ``stale_after_attempt``, not a plain ``stale``."""

    async def scenario() -> None:
        async with world(sqlite_url, temporal_address) as w:
            caller = await w.start_agent()
            w.ledger.complete(caller.execution_id)
            dispatcher = w.dispatcher()
            execution = cast(Execution, dispatcher.ledger.repository.get(caller.execution_id))
            assert execution.outcome is not None
            delivery = Delivery.open(
                caller.execution_id,
                kind=execution.kind_name,
                phase=execution.outcome.phase,
                completed_at=execution.outcome.timestamp,
                has_callback=True,
                ledger_position=w.ledger.recorder.max_notification_id() or 0,
            )
            delivery.attempt(Call.COMPLETE)
            delivery.resolve(
                Outcome.PARKED,
                call="complete",
                grpc_status="DEADLINE_EXCEEDED",
                detail="timeout",
            )
            dispatcher.log.record([delivery])
            # The timed-out call had in fact been accepted.
            handle = w.client.get_async_activity_handle(task_token=execution.callback_token)
            await handle.complete(final_resource(execution))
            await result_of(caller)

            assert await dispatcher.retry_parked() == 1
            recorded = w.log().delivery(caller.execution_id)
            assert recorded is not None
            assert recorded.outcome is Outcome.STALE_AFTER_ATTEMPT

    run(scenario())


# 4. Re-running never calls Temporal twice.


def tracking_reset(url: str) -> None:
    """Deletes the dispatcher's tracking row, as an operator's position reset would."""
    config = parse_url(url)
    if config.is_sqlite:
        with sqlite3.connect(config.component_env("dispatcher")["SQLITE_DBNAME"]) as conn:
            deleted = conn.execute("DELETE FROM tracking").rowcount
    else:
        env = config.env
        with psycopg.connect(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            autocommit=True,
        ) as conn:
            cursor = conn.execute(
                sql.SQL("DELETE FROM {}.dispatcher_tracking").format(
                    sql.Identifier(env["POSTGRES_SCHEMA"])
                )
            )
            deleted = cursor.rowcount
    assert deleted >= 1


def test_rerunning_never_calls_temporal_twice(store_url: str, temporal_address: str) -> None:
    async def scenario() -> None:
        async with world(store_url, temporal_address) as w:
            callers = [await w.start_agent() for _ in range(4)]
            for caller in callers:
                w.ledger.complete(caller.execution_id)

            first = w.dispatcher()
            assert (await first.run(until_caught_up=True)).outcomes == {"delivered": 4}
            for caller in callers:
                await result_of(caller)
            size = log_size(first.log)
            head = w.ledger.recorder.max_notification_id()
            assert first.log.position() == head

            second = w.dispatcher()  # A restart: resumes after its position.
            second_calls = count_calls(second)
            stats = await second.run(until_caught_up=True)
            assert (stats.outcomes, stats.skipped, second_calls) == ({}, 0, [])

            tracking_reset(w.url)
            assert w.log().position() is None
            third = w.dispatcher()  # From position zero again.
            third_calls = count_calls(third)
            stats = await third.run(until_caught_up=True)
            assert stats.outcomes == {}
            assert stats.skipped == 4
            assert third_calls == []
            assert log_size(w.log()) == size  # No new outcome event.
            assert w.log().position() == head

            for caller in callers:
                events = await activity_events(caller.handle)
                assert events["COMPLETED"] == 1
                assert event_names(w.log(), caller.execution_id).count("Delivered") == 1

    run(scenario())


def test_outcomes_are_kept_when_another_run_moved_the_position(
    sqlite_url: str, temporal_address: str
) -> None:
    """Another run records the same position first (two runs at once, or a run
    racing a restart): the tracking write fails, and the dispatcher records its
    outcomes alone. They must be recorded, not lost."""

    async def scenario() -> None:
        async with world(sqlite_url, temporal_address) as w:
            callers = [await w.start_agent() for _ in range(2)]
            for caller in callers:
                w.ledger.complete(caller.execution_id)
            dispatcher = w.dispatcher()
            other_run = w.log()
            record = dispatcher.log.record
            moved: list[int] = []

            def record_after_another_run(
                deliveries: Iterable[Delivery | CanMutateAggregate[str]],
                tracking: Tracking | None = None,
            ) -> None:
                if tracking is not None and not moved:
                    other_run.record([], Tracking(LEDGER_LOG, tracking.notification_id))
                    moved.append(tracking.notification_id)
                record(deliveries, tracking)

            dispatcher.log.record = record_after_another_run  # type: ignore[method-assign,assignment]
            stats = await dispatcher.run(until_caught_up=True)
            assert moved, "the outcomes were never recorded with a position"
            assert stats.outcomes == {"delivered": 2}
            for caller in callers:
                await result_of(caller)
                names = event_names(w.log(), caller.execution_id)
                assert names == ["Opened", "Attempted", "Delivered"], names

    run(scenario())


# 5. Two dispatchers at once over the same ledger.


def test_two_dispatchers_at_once_deliver_each_completion_once(
    pg_url: str, temporal_address: str
) -> None:
    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            callers = await asyncio.gather(*(w.start_agent() for _ in range(24)))
            for caller in callers:
                w.ledger.complete(caller.execution_id)
            one = w.dispatcher(page_size=4, poll_interval=0.1)
            other = w.dispatcher(await Client.connect(temporal_address), page_size=4)
            one_calls, other_calls = count_calls(one), count_calls(other)
            stats = await asyncio.gather(
                one.run(until_caught_up=True), other.run(until_caught_up=True)
            )
            for caller in callers:
                await result_of(caller)
                assert (await activity_events(caller.handle))["COMPLETED"] == 1
            log = w.log()
            for caller in callers:
                names = event_names(log, caller.execution_id)
                assert names.count("Delivered") == 1, names
                delivery = log.delivery(caller.execution_id)
                assert delivery is not None and delivery.outcome is Outcome.DELIVERED
            delivered = sum(s.outcomes.get("delivered", 0) for s in stats)
            assert delivered == len(callers)
            assert sorted(one_calls + other_calls) == sorted(c.execution_id for c in callers)

    run(scenario())


def lock_holder(url: str) -> int | None:
    """The pid of the backend holding the dispatcher's single-active lock of the
    ledger at ``url`` (an advisory lock on ``hashtext('ledger-dispatcher:<schema>')``)."""
    key = f"ledger-dispatcher:{parse_url(url).env['POSTGRES_SCHEMA']}"
    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        row = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
            "AND l.objid = (hashtext(%s)::bigint & 4294967295)::text::oid",
            (key,),
        ).fetchone()
    return int(row[0]) if row else None


async def lock_taken(url: str, *, other_than: int | None = None, timeout: float = 60) -> int:
    """Waits until a backend other than ``other_than`` holds the single-active lock;
    returns its pid."""
    holders: list[int | None] = [None]

    def taken() -> bool:
        holders[0] = lock_holder(url)
        return holders[0] not in (None, other_than)

    await asyncio.to_thread(
        wait_for, taken, timeout=timeout, message="a dispatcher to take the lock"
    )
    holder = holders[0]
    assert holder is not None
    return holder


def test_a_dispatcher_that_loses_its_lock_stands_by_and_a_standby_takes_over(
    pg_url: str, temporal_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The active dispatcher's lock connection is terminated (as a server restart
    would): it notices, stops calling Temporal and stands by; one of the two takes
    the lock again (a new backend) and delivers what follows; every caller is woken
    once, by one call of one of them."""

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            first = w.dispatcher(poll_interval=0.1, lock_check_interval=0.1)
            second = w.dispatcher(
                await Client.connect(temporal_address), poll_interval=0.1, lock_check_interval=0.1
            )
            first_calls, second_calls = count_calls(first), count_calls(second)
            running = [asyncio.create_task(first.run())]
            holder = await lock_taken(w.url)
            running.append(asyncio.create_task(second.run()))  # Stands by.
            callers = [await w.start_agent() for _ in range(4)]
            await asyncio.to_thread(w.ledger.complete, callers[0].execution_id)
            await result_of(callers[0])

            with psycopg.connect(w.url.partition("?")[0], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
            await lock_taken(w.url, other_than=holder)
            for caller in callers[1:]:
                await asyncio.to_thread(w.ledger.complete, caller.execution_id)
            for caller in callers[1:]:
                await result_of(caller)

            for dispatcher in (first, second):
                dispatcher.stop()
            w.ledger.create(agent_execution())  # A NOTIFY ends the waits at once.
            await asyncio.wait_for(asyncio.gather(*running), 30)
            assert first_calls[:1] == [callers[0].execution_id]
            assert sorted(first_calls + second_calls) == sorted(c.execution_id for c in callers)
            for caller in callers:
                assert (await activity_events(caller.handle))["COMPLETED"] == 1
            log = w.log()
            for caller in callers:
                assert event_names(log, caller.execution_id).count("Delivered") == 1
            head = w.ledger.recorder.max_notification_id()
            assert head is not None and log.position() == head - 1  # The create after.
            assert "lost the single-active lock" in caplog.text

    with caplog.at_level("WARNING", logger="projections.dispatch.dispatcher"):
        run(scenario())


def test_losing_the_lock_with_calls_in_flight_wakes_each_caller_once(
    pg_url: str, temporal_address: str
) -> None:
    """The lock is lost while the active dispatcher's calls are in flight (slowed
    down here): it lets them end, and whichever records first, each caller is woken
    once and each delivery ends with one outcome; neither run fails."""

    async def scenario() -> None:
        async with world(pg_url, temporal_address) as w:
            first = w.dispatcher(poll_interval=0.1, lock_check_interval=0.1)
            second = w.dispatcher(
                await Client.connect(temporal_address), poll_interval=0.1, lock_check_interval=0.1
            )
            send = first.sender.send
            sending = asyncio.Event()

            async def slow(execution: Execution, token: bytes, **kwargs: Any) -> CallbackResult:
                sending.set()
                await asyncio.sleep(1.5)  # The lock is lost meanwhile.
                return await send(execution, token, **kwargs)

            first.sender.send = slow  # type: ignore[method-assign]
            running = [asyncio.create_task(first.run())]
            holder = await lock_taken(w.url)
            running.append(asyncio.create_task(second.run()))
            callers = [await w.start_agent() for _ in range(3)]
            for caller in callers:
                await asyncio.to_thread(w.ledger.complete, caller.execution_id)
            await asyncio.wait_for(sending.wait(), 10)
            with psycopg.connect(w.url.partition("?")[0], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
            for caller in callers:
                await result_of(caller)
            deadline = time.monotonic() + 20
            log = w.log()
            while not all(
                (d := log.delivery(c.execution_id)) is not None and d.is_final for c in callers
            ):
                assert time.monotonic() < deadline, "a delivery never got its outcome"
                await asyncio.sleep(0.1)
            for dispatcher in (first, second):
                dispatcher.stop()
            w.ledger.create(agent_execution())
            await asyncio.wait_for(asyncio.gather(*running), 30)  # Neither run failed.
            for caller in callers:
                assert (await activity_events(caller.handle))["COMPLETED"] == 1
                names = event_names(w.log(), caller.execution_id)
                outcomes = [n for n in names if n not in ("Opened", "Attempted")]
                assert len(outcomes) == 1, names
                assert outcomes[0] in ("Delivered", "StaleAfterAttempt"), names

    run(scenario())


# 6. Live: completions appended while a dispatcher runs.


def test_live_completions_are_delivered(store_url: str, temporal_address: str) -> None:
    """PostgreSQL: LISTEN wakes the dispatcher long before its (slow) poll.
    SQLite: polling."""

    async def scenario() -> None:
        async with world(store_url, temporal_address) as w:
            is_postgres = parse_url(w.url).is_postgres
            poll = 5.0 if is_postgres else 0.1
            callers = [await w.start_agent() for _ in range(3)]
            dispatcher = w.dispatcher(poll_interval=poll)
            running = asyncio.create_task(dispatcher.run())
            await asyncio.sleep(0.5)  # Caught up and waiting.
            latencies: list[float] = []
            last_completion = 0
            for caller in callers:
                started = time.monotonic()
                await asyncio.to_thread(w.ledger.complete, caller.execution_id)
                last_completion = w.ledger.recorder.max_notification_id() or 0
                check_final(
                    AGENT_EXECUTION,
                    await result_of(caller),
                    caller.execution_id,
                    Phase.COMPLETED,
                    driven=False,
                )
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.2)
            assert not running.done()
            assert max(latencies) < (1.0 if is_postgres else 2.0), latencies
            dispatcher.stop()
            if is_postgres:
                w.ledger.create(agent_execution())  # A NOTIFY ends the wait at once.
            stats = await asyncio.wait_for(running, poll + 5)
            assert stats.outcomes == {"delivered": 3}
            assert dispatcher.log.position() == last_completion

    run(scenario())


# 7. Starting on a store nothing has touched yet.


def test_dispatcher_starts_on_a_postgres_schema_not_created_yet(
    pg_url: str, temporal_address: str
) -> None:
    """``python -m ledger dispatcher run`` may well start before anything else
    has opened the ledger (docker-compose starts it beside PostgreSQL): the
    schema named in ``LEDGER_URL`` must be created, as ``open_ledger`` does."""

    async def scenario() -> None:
        client = await Client.connect(temporal_address)
        dispatcher = Dispatcher(parse_url(pg_url), client, poll_interval=0.05)
        try:
            stats = await dispatcher.run(until_caught_up=True)
        finally:
            dispatcher.close()
        assert (stats.outcomes, stats.skipped) == ({}, 0)
        ledger = open_ledger(pg_url)
        try:
            assert ledger.recorder.max_notification_id() in (None, 0)
        finally:
            ledger.close()

    run(scenario())
