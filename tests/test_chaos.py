"""Chaos: SIGKILL at random moments of a run that appends, projects and dispatches.

Four processes work on one PostgreSQL schema while workflows wait in Temporal:

- two writers (``python -m tests.support.writer planned``), each driving the
  executions it owns through their plans: executions recorded by the caller
  activity with real task tokens (workflows :class:`ChaosCallers`
  started in seeded waves, on a worker in this process), and executions of its
  own without token, created with deterministic ids; status patches, then
  complete, complete by status patch, fail or cancel (some of its own stay
  running);
- the views (``ledger projections run``: status and audit);
- the dispatcher (``python -m ledger dispatcher run``).

A seeded schedule (``CHAOS_SEED``, printed in every assertion message) SIGKILLs
one of them at a time, at random moments (some right after a restart, during
start-up), and starts it again: more than 20 kills, spread over the four. The
workload (plans, kinds, owners, waves) is drawn from the same seed; the exact
interleaving of course depends on the machine.

After the last restart the writers finish their plans and exit, the workflows
end, the views and the dispatcher catch up and stop on SIGTERM. Then:

- the ledger: every execution's events are exactly its plan's (no command lost,
  none applied twice, whatever the writers' kills);
- every view equals a rebuild from position zero, every execution is in the
  status view with its version (its number of events) and final phase, the phase
  counts add up, and every terminal execution is in the audit view with the
  dispatcher's outcome and number of attempts;
- the dispatcher's log: every terminal execution has exactly one final outcome,
  ``delivered`` or ``stale_after_attempt`` (only after an attempt cut off by a
  kill) with a token, ``no_callback`` without; nothing else is ever delivered;
- Temporal's side: every workflow returned, for each call, exactly what its
  plan says (final resource, failure type and message, messages and tasks
  without duplicates), and its history shows every activity closed exactly
  once (completed or failed, never timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf.json_format import MessageToDict
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ledger.application import open_ledger
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    AgentExecutionSpec,
    Resource,
    WorkflowExecution,
    kind_named,
)
from ledger.contract.names import COMPLETED_TOPICS
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.store.recorder import LedgerPostgresApplicationRecorder
from ledger.store.url import parse_url
from ledger.temporal.caller import ExecutionActivities, execution_id_for
from ledger.temporal.workflow import execute_agent_execution, execute_workflow_execution
from projections.dispatch.calls import CallbackResult, CallbackSender, call_for
from projections.dispatch.delivery import Delivery, Outcome
from projections.dispatch.dispatcher import Dispatcher
from projections.dispatch.in_flight import InFlightCalls
from projections.dispatch.log import DispatcherLog
from projections.views import Views
from tests.support.builders import ORIGIN_LABEL, PLAN_LABEL, Plan, planned_resource
from tests.support.processes import LEDGER, Killable, planned_writer_args
from tests.support.waiting import wait_for
from tests.support.writer import CREATED_TOPIC, ERROR_TYPE

pytestmark = pytest.mark.postgres

SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
WRITERS = ("w0", "w1")
KILLS_PER_TARGET = {"w0": 5, "w1": 5, "views": 6, "dispatcher": 6}
RAPID_KILL_CHANCE = 0.25
"""After a kill, the chance that the restarted process is killed again during start-up."""
WRITER_PAUSE = 0.01
"""Seconds between a writer's commands (about 80 commands/s each on this machine)."""
FINAL_TIMEOUT = 120.0
"""Seconds for each wait of the end of a run (generous: the machine may be loaded)."""
ROOT = Path(__file__).resolve().parent.parent
CANCELLED_TYPE = "ExecutionCancelled"
CALL_TIMEOUT = timedelta(minutes=10)
FINAL_OUTCOMES = {"Delivered", "StaleAfterAttempt", "Stale", "Rejected", "NoCallback"}


def context(extra: str = "") -> str:
    return f"CHAOS_SEED={SEED}" + (f": {extra}" if extra else "")


# What the caller receives.


def describe_final(final: Resource) -> dict[str, Any]:
    """What a caller sees of a final resource (compared with :func:`expected_result`)."""
    status: Any = final.status
    described: dict[str, Any] = {
        "id": final.metadata.id,
        "phase": Phase(status.phase).name,
        "token": bool(final.spec.callback_token),
    }
    if isinstance(final, AgentExecution):
        described["messages"] = [m.content for m in final.status.messages]
    else:
        described["tasks"] = [t.task_id for t in final.status.tasks]
        described["output"] = MessageToDict(final.status.output)
    return described


def describe_failure(error: ActivityError) -> dict[str, Any]:
    cause = error.cause
    if not isinstance(cause, ApplicationError):
        return {"error": type(cause).__name__, "message": str(cause)}
    described: dict[str, Any] = {"error": cause.type, "message": cause.message}
    if cause.details and isinstance(cause.details[0], AgentExecution | WorkflowExecution):
        described["final"] = describe_final(cause.details[0])
    return described


def expected_result(kind_name: str, owner: str, plan: Plan, execution_id: str) -> dict[str, Any]:
    """What the caller of a token execution must receive once its plan has run."""
    final: dict[str, Any] = {
        "id": execution_id,
        "phase": plan.final_phase.name,
        "token": False,
    }
    if kind_name == AGENT_EXECUTION.name:
        final["messages"] = [f"step {j}" for j in range(plan.steps)]
        if plan.end == "finish":
            final["messages"].append("finish")
    else:
        final["tasks"] = [f"task-{j}" for j in range(plan.steps)]
        final["output"] = {}
        if plan.end == "finish":
            final["tasks"].append("task-finish")
            final["output"] = {"finished": execution_id}
        elif plan.end == "complete":
            final["output"] = {"by": owner, "id": execution_id}
    if plan.end in ("complete", "finish"):
        return {"completed": final}
    if plan.end == "fail":
        return {"error": ERROR_TYPE, "message": f"chaos failure of {execution_id}", "final": final}
    assert plan.end == "cancel", plan
    return {"error": CANCELLED_TYPE, "message": f"chaos cancel of {execution_id}", "final": final}


# The workflow.


@workflow.defn(name="ChaosCallers")
class ChaosCallers:
    """Awaits one execution per call (``[kind, owner, plan]``), all at once; returns,
    per call in order, ``{"completed": final}`` or the failure it received."""

    @workflow.run
    async def run(self, calls: list[list[str]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._one(*call) for call in calls)))

    async def _one(self, kind_name: str, owner: str, plan_label: str) -> dict[str, Any]:
        plan = Plan.parse(plan_label)
        request = planned_resource(kind_name, owner, plan, "token")
        try:
            if isinstance(request, AgentExecution):
                final: Resource = await execute_agent_execution(
                    request, start_to_close_timeout=CALL_TIMEOUT
                )
            else:
                final = await execute_workflow_execution(
                    request, start_to_close_timeout=CALL_TIMEOUT
                )
        except ActivityError as e:
            return describe_failure(e)
        return {"completed": describe_final(final)}


# The schedule.


@dataclass(frozen=True)
class Kill:
    delay: float
    """Seconds after the previous kill (or the start)."""
    target: str
    restart_after: float


def kill_schedule(seed: int) -> list[Kill]:
    """Every target killed a fixed number of times in a seeded order, at seeded
    moments, some of them again right after their restart."""
    rng = random.Random(f"{seed}:kills")
    targets = [name for name, n in KILLS_PER_TARGET.items() for _ in range(n)]
    rng.shuffle(targets)
    kills = [Kill(rng.uniform(1.5, 3.0), targets[0], rng.uniform(0, 0.3))]
    for target in targets[1:]:
        kills.append(Kill(rng.uniform(0.6, 2.4), target, rng.uniform(0, 0.3)))
        if rng.random() < RAPID_KILL_CHANCE:
            kills.append(Kill(rng.uniform(0.05, 0.6), target, rng.uniform(0, 0.3)))
    return kills


@dataclass(frozen=True)
class Wave:
    delay: float
    calls: list[list[list[str]]]
    """One list of ``[kind, owner, plan]`` per workflow."""


def wave_schedule(seed: int, seconds: float) -> list[Wave]:
    """Workflows started in waves over ``seconds``: kinds, owners and plans seeded."""
    rng = random.Random(f"{seed}:waves")
    waves: list[Wave] = []
    elapsed = 0.0
    while elapsed < seconds:
        delay = 0.0 if not waves else rng.uniform(0.8, 2.0)
        elapsed += delay
        calls = [
            [
                [
                    rng.choice([AGENT_EXECUTION.name, WORKFLOW_EXECUTION.name]),
                    rng.choice(WRITERS),
                    Plan.draw(rng, ends=("complete", "finish", "fail", "cancel")).label,
                ]
                for _ in range(rng.randint(3, 8))
            ]
            for _ in range(2)
        ]
        waves.append(Wave(delay, calls))
    return waves


# The processes.


def make_processes(url: str, temporal: str, stop_file: Path, tmp: Path) -> dict[str, Killable]:
    def env(role: str) -> dict[str, str]:
        return {
            "LEDGER_URL": url,
            "TEMPORAL_ADDRESS": temporal,
            "PGAPPNAME": f"chaos-{role}-{uuid.uuid4().hex[:8]}",
            "POSTGRES_POOL_SIZE": "1",
        }

    processes = {
        name: Killable(
            name,
            planned_writer_args(url, name, SEED, stop_file, WRITER_PAUSE),
            env(name),
            tmp / f"{name}.log",
            context,
        )
        for name in WRITERS
    }
    processes["views"] = Killable(
        "views",
        [LEDGER, "projections", "run", "--url", url],
        env("views"),
        tmp / "views.log",
        context,
    )
    processes["dispatcher"] = Killable(
        "dispatcher",
        ["-m", "ledger", "dispatcher", "run"],
        env("dispatcher"),
        tmp / "dispatcher.log",
        context,
    )
    return processes


# Reading the results.


@dataclass
class Caller:
    handle: WorkflowHandle[Any, Any]
    calls: list[list[str]]
    execution_ids: list[str]


def ledger_events(url: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, Plan, str]]]:
    """Event types per execution, in order; (kind, plan, origin) per execution."""
    ledger = open_ledger(url)
    try:
        types: dict[str, list[str]] = defaultdict(list)
        plans: dict[str, tuple[str, Plan, str]] = {}
        start = 1
        while True:
            page = ledger.recorder.select_notifications(start, 1000)
            for n in page:
                execution_id = str(n.originator_id)
                types[execution_id].append(n.topic.rpartition(".")[2])
                if n.topic == CREATED_TOPIC:
                    created: Any = ledger.mapper.to_domain_event(n)
                    labels = created.metadata.labels
                    plans[execution_id] = (
                        created.kind,
                        Plan.parse(labels[PLAN_LABEL]),
                        labels[ORIGIN_LABEL],
                    )
            if len(page) < 1000:
                return dict(types), plans
            start = page[-1].id + 1
    finally:
        ledger.close()


def delivery_events(url: str) -> dict[str, list[str]]:
    """The dispatcher's log: event types per execution, in order (all that is
    committed: a transaction elsewhere in the cluster, another test's, may hold the
    readable head back for a while)."""
    log = DispatcherLog(parse_url(url).component_env("dispatcher"))
    try:
        recorder = log.recorder
        if isinstance(recorder, LedgerPostgresApplicationRecorder):
            horizon = recorder.horizon
            committed = recorder.committed_head()

            def readable() -> bool:
                horizon.observe()
                return (horizon.readable or 0) >= committed

            wait_for(readable, message=f"the dispatcher's log readable up to {committed}")
        events: dict[str, list[str]] = defaultdict(list)
        start = 1
        while True:
            page = log.recorder.select_notifications(start, 1000)
            for n in page:
                events[str(n.originator_id)].append(n.topic.rpartition(".")[2])
            if len(page) < 1000:
                return dict(events)
            start = page[-1].id + 1
    finally:
        log.close()


async def closed_activities(handle: WorkflowHandle[Any, Any]) -> tuple[int, Counter[str]]:
    """(activities scheduled, how they closed), each closing event counted once per
    scheduled activity, from Temporal's own history of the workflow."""
    history = await handle.fetch_history()
    scheduled = 0
    closed: Counter[str] = Counter()
    closings: Counter[int] = Counter()
    for event in history.events:
        name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_ACTIVITY_TASK_")
        if name == "SCHEDULED":
            scheduled += 1
        elif name in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELED"):
            closed[name] += 1
            attributes = getattr(event, f"activity_task_{name.lower()}_event_attributes")
            closings[attributes.scheduled_event_id] += 1
    assert all(n == 1 for n in closings.values()), context(f"closed twice: {closings}")
    return scheduled, closed


# The test.


@pytest.mark.slow
@pytest.mark.temporal
def test_sigkill_at_random_moments(pg_url: str, temporal_address: str, tmp_path: Path) -> None:
    kills = kill_schedule(SEED)
    chaos_seconds = sum(k.delay + k.restart_after for k in kills)
    waves = wave_schedule(SEED, chaos_seconds)
    stop_file = tmp_path / "writers.stop"
    processes = make_processes(pg_url, temporal_address, stop_file, tmp_path)
    callers: list[Caller] = []
    started = time.monotonic()
    timings: dict[str, float] = {}

    async def start_waves(client: Client, task_queue: str) -> None:
        for w, wave in enumerate(waves):
            await asyncio.sleep(wave.delay)
            for i, calls in enumerate(wave.calls):
                handle = await client.start_workflow(
                    ChaosCallers.run,
                    calls,
                    id=f"chaos-{SEED}-{w}-{i}-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )
                run_id = handle.result_run_id
                assert run_id is not None
                ids = [
                    execution_id_for(kind_named(kind), handle.id, run_id, str(n + 1), 1)
                    for n, (kind, _, _) in enumerate(calls)
                ]
                callers.append(Caller(handle, calls, ids))

    async def kill_and_restart() -> None:
        for kill in kills:
            await asyncio.sleep(kill.delay)
            for process in processes.values():
                process.check_alive()
            target = processes[kill.target]
            await asyncio.to_thread(target.kill)
            await asyncio.sleep(kill.restart_after)
            target.start()

    async def scenario() -> None:
        client = await Client.connect(temporal_address)
        ledger = open_ledger(pg_url)
        task_queue = f"chaos-{uuid.uuid4().hex}"
        try:
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[ChaosCallers],
                activities=ExecutionActivities(ledger).all(),
                workflow_runner=UnsandboxedWorkflowRunner(),
                max_concurrent_activities=200,
            ):
                for process in processes.values():
                    process.start()
                await asyncio.gather(start_waves(client, task_queue), kill_and_restart())
                timings["chaos"] = time.monotonic() - started
                for process in processes.values():
                    process.check_alive()
                # Every awaited execution recorded (the caller activity ran), then the
                # writers finish their plans and exit.
                expected = {i for caller in callers for i in caller.execution_ids}

                def all_recorded() -> bool:
                    found = ledger.recorder.select_notifications(1, 10**6, topics=[CREATED_TOPIC])
                    return expected <= {str(n.originator_id) for n in found}

                await asyncio.to_thread(
                    wait_for,
                    all_recorded,
                    FINAL_TIMEOUT,
                    0.2,
                    context("every caller's execution recorded"),
                )
                stop_file.touch()
                for name in WRITERS:
                    code = await asyncio.to_thread(processes[name].wait, FINAL_TIMEOUT)
                    assert code == 0, context(f"{name} exited {code}:\n{processes[name].tail()}")
                timings["writers done"] = time.monotonic() - started
                try:
                    results = await asyncio.wait_for(
                        asyncio.gather(*(c.handle.result() for c in callers)), FINAL_TIMEOUT
                    )
                except TimeoutError:
                    raise AssertionError(
                        context(await asyncio.to_thread(diagnose, pg_url, callers, processes))
                    ) from None
                timings["callers done"] = time.monotonic() - started
                check_callers(callers, cast(list[list[dict[str, Any]]], results))
                for caller in callers:
                    scheduled, closed = await closed_activities(caller.handle)
                    assert scheduled == len(caller.calls), context(caller.handle.id)
                    assert closed["COMPLETED"] + closed["FAILED"] == scheduled, context(
                        f"{caller.handle.id}: {closed}"
                    )
                    assert closed["TIMED_OUT"] == closed["CANCELED"] == 0, context(str(closed))
        finally:
            ledger.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 300))
        with contextlib.closing(Views(parse_url(pg_url))) as views:
            wait_for(
                lambda: all(lag.lag == 0 for lag in views.lag()),
                timeout=FINAL_TIMEOUT,
                interval=0.2,
                message=context("the views and the dispatcher caught up"),
            )
            for name in ("views", "dispatcher"):
                code = processes[name].stop()
                assert code == 0, context(f"{name} exited {code}:\n{processes[name].tail()}")
            timings["followers done"] = time.monotonic() - started
            report = check_everything(pg_url, views, callers, processes)
    except BaseException as e:
        e.add_note(f"CHAOS_SEED={SEED} (set it in the environment to replay this schedule)")
        raise
    finally:
        for process in processes.values():
            if process.process is not None and process.process.poll() is None:
                process.process.kill()
                process.process.wait(10)
    timings["checked"] = time.monotonic() - started
    print(f"\nchaos run, {context()}: {report}; timings {timings}")


def diagnose(url: str, callers: list[Caller], processes: dict[str, Killable]) -> str:
    """What the callers still wait for, and what the dispatcher made of it."""
    types, _ = ledger_events(url)
    deliveries = delivery_events(url)
    waiting = []
    for caller in callers:
        for execution_id in caller.execution_ids:
            names = deliveries.get(execution_id, [])
            if not {"Delivered", "StaleAfterAttempt"} & set(names):
                waiting.append(f"{execution_id}: ledger {types.get(execution_id)}, log {names}")
    with contextlib.closing(Views(parse_url(url))) as views:
        lags = views.lag()
    return (
        f"callers still waiting; undelivered: {waiting[:20]} ({len(waiting)}); lag {lags}; "
        f"dispatcher log:\n{processes['dispatcher'].tail(6000)}"
    )


def check_callers(callers: list[Caller], results: list[list[dict[str, Any]]]) -> None:
    """Each call received exactly what its plan says, with its own execution."""
    for caller, received in zip(callers, results, strict=True):
        assert len(received) == len(caller.calls), context(caller.handle.id)
        for (kind, owner, label), execution_id, got in zip(
            caller.calls, caller.execution_ids, received, strict=True
        ):
            want = expected_result(kind, owner, Plan.parse(label), execution_id)
            assert got == want, context(f"{caller.handle.id} {execution_id} ({label})")


def check_everything(
    url: str, views: Views, callers: list[Caller], processes: dict[str, Killable]
) -> str:
    types, plans = ledger_events(url)
    # The ledger: each execution's events are exactly its plan's.
    assert set(types) == set(plans), context("events without a Created")
    for execution_id, (_, plan, _) in plans.items():
        assert types[execution_id] == plan.events, context(
            f"{execution_id} ({plan.label}): {types[execution_id]}"
        )
    token_ids = {i for c in callers for i in c.execution_ids}
    assert token_ids == {i for i, (_, _, origin) in plans.items() if origin == "token"}, context()
    terminal = {i for i, (_, plan, _) in plans.items() if plan.final_phase.is_terminal}

    # The views: equal to a rebuild, and to the ledger.
    views.catch_up()
    assert all(lag.lag == 0 for lag in views.lag()), context(str(views.lag()))
    live = (views.status.snapshot(), views.audit.snapshot(), views.status.counts_by_phase())
    rebuilt_events = views.rebuild("status") + views.rebuild("audit")
    rebuilt = (views.status.snapshot(), views.audit.snapshot(), views.status.counts_by_phase())
    assert live[0] == rebuilt[0], context("status view differs from its rebuild")
    assert live[1] == rebuilt[1], context("audit view differs from its rebuild")
    assert live[2] == rebuilt[2], context("phase counts differ from the rebuild")
    status_rows = {row.id: row for row in live[0]}
    assert set(status_rows) == set(plans), context("status rows != executions")
    for execution_id, row in status_rows.items():
        kind, plan, origin = plans[execution_id]
        assert row.version == len(types[execution_id]), context(execution_id)
        assert row.phase == plan.final_phase.proto_name, context(execution_id)
        assert row.kind == kind and row.has_callback == (origin == "token"), context(execution_id)
    assert live[2] == dict(Counter(row.phase for row in live[0])), context(str(live[2]))

    # The dispatcher: exactly one final outcome per terminal execution.
    deliveries = delivery_events(url)
    assert set(deliveries) == terminal, context(
        f"deliveries without completion: {set(deliveries) - terminal}, "
        f"completions without delivery: {terminal - set(deliveries)}"
    )
    outcomes: Counter[str] = Counter()
    retried = 0
    for execution_id in terminal:
        names = deliveries[execution_id]
        finals = [n for n in names if n in FINAL_OUTCOMES]
        assert names[0] == "Opened" and len(finals) == 1 and names[-1] == finals[0], context(
            f"{execution_id}: {names}"
        )
        if execution_id in token_ids:
            attempts = names.count("Attempted")
            assert finals[0] in ("Delivered", "StaleAfterAttempt"), context(
                f"{execution_id}: {names}"
            )
            if finals[0] == "StaleAfterAttempt":
                assert attempts >= 2, context(f"{execution_id}: {names}")
            retried += attempts > 1
        else:
            assert names == ["Opened", "NoCallback"], context(f"{execution_id}: {names}")
        outcomes[finals[0]] += 1
    audit_rows = {row.execution_id: row for row in live[1]}
    assert set(audit_rows) == terminal, context("audit rows != terminal executions")
    outcome_values = {
        "Delivered": "delivered",
        "StaleAfterAttempt": "stale_after_attempt",
        "NoCallback": "no_callback",
    }
    for execution_id, audit in audit_rows.items():
        names = deliveries[execution_id]
        final = next(n for n in names if n in FINAL_OUTCOMES)
        assert audit.outcome == outcome_values[final], context(f"{execution_id}: {audit}")
        assert audit.attempts == names.count("Attempted"), context(f"{execution_id}: {audit}")
        assert audit.phase == plans[execution_id][1].final_phase.proto_name, context(execution_id)

    kills = {name: p.kills for name, p in processes.items()}
    assert sum(kills.values()) >= 20 and min(kills.values()) >= 5, context(str(kills))
    return (
        f"kills {kills} ({sum(kills.values())}), events {sum(map(len, types.values()))}, "
        f"executions {len(plans)} ({len(token_ids)} awaited by {len(callers)} workflows, "
        f"{len(terminal)} terminal), outcomes {dict(outcomes)}, "
        f"deliveries attempted more than once {retried}, rebuild replayed {rebuilt_events} events"
    )


def test_plans_know_their_next_command() -> None:
    plan = Plan(2, "finish")
    assert plan.events == [
        "Created",
        "StatusChanged",
        "StatusChanged",
        "StatusChanged",
        "Completed",
    ]
    assert [plan.next_command(v) for v in (0, 1, 2, 3, 5)] == [
        "create",
        "step 0",
        "step 1",
        "finish",
        None,
    ]
    with pytest.raises(AssertionError):
        plan.next_command(4)  # Inside the finish command: never a whole-command prefix.
    assert Plan(0, "none").next_command(1) is None
    assert Plan(1, "none").final_phase is Phase.IN_PROGRESS
    schedule = kill_schedule(SEED)
    assert schedule == kill_schedule(SEED)
    assert len(schedule) >= 20
    assert Counter(k.target for k in schedule)["w0"] >= KILLS_PER_TARGET["w0"]


# What the chaos run found: the dispatcher's position passed deliveries whose
# outcome (or whose attempt) was not recorded yet, so a kill in that window left
# them behind the position for good. Both races are replayed here step by step,
# in one process, with a sender that makes no call.


class _NoCallSender(CallbackSender):
    """Every call "delivered", without Temporal."""

    def __init__(self) -> None:
        super().__init__(cast(Client, None))

    async def send(
        self, execution: Execution, token: bytes, *, earlier_attempt_unconfirmed: bool = False
    ) -> CallbackResult:
        return CallbackResult(Outcome.DELIVERED, call_for(Phase(execution.phase)))


class _Crash(Exception):
    """Stands for a SIGKILL: the dispatcher goes no further."""


def _completed_with_tokens(url: str, count: int) -> list[str]:
    with contextlib.closing(open_ledger(url)) as ledger:
        ids = []
        for n in range(count):
            record = ledger.create(
                AgentExecution(
                    spec=AgentExecutionSpec(
                        agent_id="a", message="m", callback_token=f"token-{n}".encode()
                    )
                )
            )
            ledger.complete(record.id, {"n": n})
            ids.append(record.id)
        return ids


def _readable_completions(url: str, count: int) -> list[Any]:
    """The log's first ``count`` completions, once a follower can read them all (a
    transaction open elsewhere in the cluster holds the readable head back meanwhile:
    :mod:`ledger.store.horizon`)."""
    page: list[Any] = []

    def readable() -> bool:
        with contextlib.closing(open_ledger(url)) as ledger:
            page[:] = ledger.recorder.select_notifications(1, 100, topics=list(COMPLETED_TOPICS))
        return len(page) >= count

    wait_for(readable, message=lambda: f"{count} completions readable (read {len(page)})")
    return page


def _dispatcher(url: str) -> Dispatcher:
    dispatcher = Dispatcher(parse_url(url), cast(Client, None), poll_interval=0.05)
    dispatcher.sender = _NoCallSender()
    return dispatcher


def _after_restart(url: str, ids: list[str]) -> dict[str, list[str]]:
    """A new dispatcher runs until caught up; returns the log's events per execution."""
    restarted = _dispatcher(url)
    try:
        asyncio.run(restarted.run(until_caught_up=True))
    finally:
        restarted.close()
    events = delivery_events(url)
    return {i: events.get(i, []) for i in ids}


def test_outcomes_resolved_while_a_flush_runs_are_recorded_before_its_position(
    pg_url: str,
) -> None:
    ids = _completed_with_tokens(pg_url, 1)
    crashed = _dispatcher(pg_url)
    try:
        page = _readable_completions(pg_url, len(ids))
        (job,) = crashed.preparer.prepare(page)
        watermark = crashed.book.watermark
        calls = InFlightCalls(crashed.sender, crashed.book, crashed.stats)

        def resolved_meanwhile() -> int:
            # The call returns (on the event loop) while the flush thread is at work.
            crashed.book.watermark = watermark  # type: ignore[method-assign]
            asyncio.run(calls.deliver(job))
            return watermark()

        crashed.book.watermark = resolved_meanwhile  # type: ignore[method-assign]
        crashed.flusher.flush()  # The flusher's run; then the process dies before the next one.
    finally:
        crashed.close()
    assert _after_restart(pg_url, ids) == {ids[0]: ["Opened", "Attempted", "Delivered"]}


def test_completions_being_prepared_are_not_covered_by_a_concurrent_flush(pg_url: str) -> None:
    ids = _completed_with_tokens(pg_url, 2)
    crashed = _dispatcher(pg_url)
    try:
        page = _readable_completions(pg_url, len(ids))
        delivery = crashed.log.delivery

        def flushed_meanwhile(execution_id: str) -> Delivery | None:
            crashed.flusher.flush()  # The flusher thread runs while this page is read...
            raise _Crash  # ... and the process dies before recording the page.

        crashed.log.delivery = flushed_meanwhile  # type: ignore[method-assign]
        with pytest.raises(_Crash):
            crashed.preparer.prepare(page)
        crashed.log.delivery = delivery  # type: ignore[method-assign]
    finally:
        crashed.close()
    delivered = ["Opened", "Attempted", "Delivered"]
    assert _after_restart(pg_url, ids) == {ids[0]: delivered, ids[1]: delivered}
