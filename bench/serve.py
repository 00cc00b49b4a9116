"""`ledger serve` beside the in-process API and a bare grpcio service, in one run.

On PostgreSQL (``LEDGER_BENCH_POSTGRES``, default the test server), for 1, 8 and 64
concurrent clients, each updating its own execution's status in a loop for
``--seconds``:

- ``serve``: ``updateStatus`` through a real ``ledger serve`` process (grpc.aio
  client, one channel, as a runner would use it);
- ``in-process``: ``Ledger.update_status`` from as many threads, same patches;
- ``echo``: a bare grpcio service in a process of its own that returns the request's
  bytes, with a request of the same size: what gRPC itself costs here.

Then ``subscribe`` fan-out: ``--streams`` streams spread over 50 executions, a status
change every 20 ms, and the time from the write returning to each stream receiving
it (p50, p99). Prints the figures and the ratios; stops by itself; drops its schema.

Usage: ``python bench/serve.py [--seconds 5] [--streams 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger import AgentExecution, AgentExecutionSpec, AgentExecutionStatus, open_ledger  # noqa: E402
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum  # noqa: E402
from ledger.grpc.agentexecution.v1 import command_pb2_grpc as agent_command  # noqa: E402
from ledger.grpc.agentexecution.v1 import io_pb2 as agent_io  # noqa: E402
from ledger.grpc.agentexecution.v1 import query_pb2_grpc as agent_query  # noqa: E402

POSTGRES = os.environ.get("LEDGER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = (1, 8, 64)
ECHO_METHOD = "/bench.Echo/Echo"


def _patch(step: int) -> AgentExecutionStatus:
    patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
    patch.messages.add(content=f"step {step}: " + "x" * 200)
    return patch


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    if not ordered:
        return 0.0, 0.0
    return (
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def _start(args: list[str], pattern: str, cwd: Path = ROOT) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(pattern, line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(found[1])
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"{args} did not start")


# The bare grpcio service (run in a process of its own: `serve.py --echo`).


async def _echo_server() -> None:
    server = grpc.aio.server()
    handler: Any = grpc.unary_unary_rpc_method_handler(_echo)
    queues: dict[bytes, set[asyncio.Queue[bytes]]] = {}

    async def subscribe(request: bytes, context: Any) -> AsyncIterator[bytes]:
        # The bare fan-out: the request is an id; each published message for it is sent
        # as it is, after a first one (as `subscribe` sends the current resource first).
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.setdefault(request, set()).add(queue)
        try:
            yield b""
            while True:
                yield await queue.get()
        finally:
            queues[request].discard(queue)

    async def publish(request: bytes, context: Any) -> bytes:
        key, _, message = request.partition(b"\0")
        for queue in queues.get(key, ()):
            queue.put_nowait(message)
        return b""

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo",
                {
                    "Echo": handler,
                    "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
                    "Publish": grpc.unary_unary_rpc_method_handler(publish),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stderr.write(f"echo serving on 127.0.0.1:{port}\n")
    await server.wait_for_termination()


async def _echo(request: bytes, context: Any) -> bytes:
    return request


# Clients.


async def _grpc_loop(call: Any, requests: list[Any], seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def one(request_of: Any) -> None:
        step = 0
        while time.monotonic() < deadline:
            step += 1
            started = time.perf_counter()
            await call(request_of(step))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(r) for r in requests))
    return latencies


def _serve_round(port: int, ids: list[str], seconds: float) -> list[float]:
    async def run() -> list[float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_command.AgentExecutionCommandControllerStub(channel)

            def request_of(execution_id: str) -> Any:
                return lambda step: agent_io.AgentExecutionUpdateStatusInput(
                    execution_id=execution_id, status=_patch(step)
                )

            return await _grpc_loop(stub.updateStatus, [request_of(i) for i in ids], seconds)

    return asyncio.run(run())


def _echo_round(port: int, clients: int, size: int, seconds: float) -> list[float]:
    payload = b"\x01" * size

    async def run() -> list[float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary(ECHO_METHOD)
            return await _grpc_loop(call, [lambda step: payload] * clients, seconds)

    return asyncio.run(run())


def _in_process_round(url: str, ids: list[str], seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    with open_ledger(url) as ledger:

        def one(execution_id: str) -> None:
            step = 0
            mine: list[float] = []
            while time.monotonic() < deadline:
                step += 1
                started = time.perf_counter()
                ledger.update_status(execution_id, _patch(step))
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        with ThreadPoolExecutor(len(ids)) as pool:
            list(pool.map(one, ids))
    return latencies


def _watch(port: int, ids: list[str], changes: int, *, bare: bool) -> None:
    """A watcher process (``serve.py --watch``): one stream per id, printing when each
    change arrived (``time.monotonic``, one clock for every process of this machine)."""

    async def run() -> list[tuple[str, int, float]]:
        received: list[tuple[str, int, float]] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if bare:
                subscribe: Any = channel.unary_stream(
                    "/bench.Echo/Subscribe",
                    request_serializer=lambda request: request.value.encode(),
                    response_deserializer=AgentExecution.FromString,
                )
            else:
                subscribe = agent_query.AgentExecutionQueryControllerStub(channel).subscribe
            ready = asyncio.Semaphore(0)

            async def watch(execution_id: str) -> None:
                stream = subscribe(agent_io.AgentExecutionId(value=execution_id))
                first = True
                async for resource in stream:
                    if first:
                        first = False
                        ready.release()
                        continue
                    step = len(resource.status.messages)
                    received.append((execution_id, step, time.monotonic()))
                    if step >= changes:
                        return

            tasks = [asyncio.create_task(watch(i)) for i in ids]
            for _ in ids:
                await asyncio.wait_for(ready.acquire(), 120)
            print("ready", flush=True)
            await asyncio.wait_for(asyncio.gather(*tasks), 300)
        return received

    for execution_id, step, at in asyncio.run(run()):
        print(f"{execution_id} {step} {at!r}")


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid`` and of its main thread (the event loop's)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    return read(f"/proc/{pid}/stat"), read(f"/proc/{pid}/task/{pid}/stat")


def _cpu_of(pids: list[int]) -> tuple[float, float]:
    each = [_cpu(pid) for pid in pids]
    return sum(c[0] for c in each), sum(c[1] for c in each)


@dataclass
class FanOut:
    """One fan-out round: each delivery's latency (s), how long the writes took, and
    what :func:`fanout_trace.breakdown` needs."""

    latencies: list[float]
    writing: float
    receipts: list[tuple[str, int, float]]
    commits: dict[tuple[str, int], tuple[float, int]]
    began: float
    cpu: tuple[float, float] = (0.0, 0.0)
    """The server's CPU seconds (process, event loop's thread) from the first write
    until every watcher had every change and ended its streams."""
    offsets: list[float] = field(default_factory=list)
    """When each change was written (committed), from the first, in the order written."""


def _fan_out(
    port: int | list[int],
    url: str,
    streams: int,
    changes: int,
    watchers: int,
    *,
    bare_port: int = 0,
    server_pid: int | list[int] = 0,
    schedule: list[float] | None = None,
    rate: float = 0.0,
) -> FanOut:
    """Latency from a status change's commit (the writer's insert returned; for the bare
    service, the publish call returned) to each stream receiving it. The streams are spread over
    ``watchers`` processes, as watchers are in a platform: one client process's event
    loop would otherwise be what is measured.

    With ``bare_port``, the same streams subscribe to the bare grpcio service instead,
    and each change is published to it with one unary call carrying the resource the
    ledger would have sent: what gRPC fan-out alone costs on this machine."""
    with open_ledger(url) as ledger:
        ids = [
            ledger.create(AgentExecution(spec=AgentExecutionSpec(agent_id="b", message="m"))).id
            for _ in range(50)
        ]
        streams_of = [ids[n % len(ids)] for n in range(streams)]
        watch = "--watch-bare" if bare_port else "--watch"
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__)),
                    watch,
                    str(bare_port or (port[w % len(port)] if isinstance(port, list) else port)),
                    str(changes),
                    *streams_of[w::watchers],
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for w in range(watchers)
        ]
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit("a watcher process did not start")
        written: dict[tuple[str, int], float] = {}
        versions: dict[tuple[str, int], int] = {}
        channel = grpc.insecure_channel(f"127.0.0.1:{bare_port}")
        publish: Any = channel.unary_unary("/bench.Echo/Publish")
        resources: dict[str, Any] = {i: ledger.read(i).resource for i in ids}
        # The moment a write committed, as the writer knows it: its insert returned.
        recorder: Any = ledger.recorder
        insert_events = recorder.insert_events
        acknowledged = [0.0]

        def timed_insert(*args: Any, **kwargs: Any) -> Any:
            result = insert_events(*args, **kwargs)
            acknowledged[0] = time.monotonic()
            return result

        recorder.insert_events = timed_insert
        pids = server_pid if isinstance(server_pid, list) else [server_pid] if server_pid else []
        cpu_before = _cpu_of(pids)
        began = time.monotonic()
        pending: list[Any] = []
        for step in range(1, changes + 1):
            for execution_id in ids:
                if bare_port:
                    resource = resources[execution_id]
                    resource.status.messages.append(_patch(step).messages[0])
                    message = execution_id.encode() + b"\0" + resource.SerializeToString()
                    if schedule is None:
                        publish(message)
                        acknowledged[0] = time.monotonic()
                    else:  # At the ledger round's pace, without waiting for the server.
                        time.sleep(max(0.0, began + schedule[len(written)] - time.monotonic()))
                        acknowledged[0] = time.monotonic()
                        pending.append(publish.future(message))
                else:
                    if rate:  # A change every 1/rate s at most (the floor of a schedule).
                        time.sleep(max(0.0, began + len(written) / rate - time.monotonic()))
                    record = ledger.update_status(execution_id, _patch(step))
                    versions[(execution_id, step)] = record.version
                written[(execution_id, step)] = acknowledged[0]
            if schedule is None and not rate:
                time.sleep(0.02)
        for future in pending:
            future.result()
        writing = time.monotonic() - began
        recorder.insert_events = insert_events
        channel.close()
        received: list[float] = []
        receipts: list[tuple[str, int, float]] = []
        for process in processes:
            try:
                out, _ = process.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()
                raise SystemExit(
                    "a watcher process did not receive every change in 300 s"
                ) from None
            for line in out.splitlines():
                stream_id, step_text, at = line.split()
                received.append(float(at) - written[(stream_id, int(step_text))])
                receipts.append((stream_id, int(step_text), float(at)))
        time.sleep(0.5)  # The streams' ends.
        cpu_after = _cpu_of(pids)
    commits = {k: (t, versions.get(k, 0)) for k, t in written.items()}
    offsets = [t - began for t in written.values()]  # In the order written.
    cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    return FanOut(received, writing, receipts, commits, began, cpu, offsets)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=2, help="processes of streams")
    parser.add_argument("--changes", type=int, default=5, help="changes per execution")
    parser.add_argument("--fan-out-only", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="alternating fan-out rounds")
    parser.add_argument(
        "--trace", metavar="FILE", help="time each stage in the server (bench/fanout_trace.py)"
    )
    parser.add_argument("--no-bare", action="store_true", help="fan out from ledger serve only")
    parser.add_argument(
        "--split",
        action="store_true",
        help="with --compare, also rounds whose watchers are split between the two servers "
        "(each following the log itself: two event loops sending)",
    )
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="an argument of ledger serve (repeat)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="changes per second written at most (default: a round of 50 as fast as the "
        "ledger takes them, then 20 ms); with --bare-paced the same offered load for all",
    )
    parser.add_argument(
        "--bare-paced",
        action="store_true",
        help="publish to the bare service at the pace of the ledger round before, without "
        "waiting for each publish call (the same offered load)",
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        type=Path,
        help="also fan out from the ledger serve of another checkout (alternating rounds)",
    )
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--watch", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--watch-bare", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        asyncio.run(_echo_server())
        return
    if args.watch or args.watch_bare:
        watch = args.watch or args.watch_bare
        _watch(int(watch[0]), watch[2:], int(watch[1]), bare=bool(args.watch_bare))
        return
    schema = "bench_serve_" + uuid.uuid4().hex[:8]
    url = f"{POSTGRES}?schema={schema}"
    size = len(
        agent_io.AgentExecutionUpdateStatusInput(
            execution_id="aex-" + "0" * 26, status=_patch(1)
        ).SerializeToString()
    )
    serve_args = ["serve", "--url", url, "--address", "127.0.0.1:0", "--no-auth", *args.serve_arg]
    launcher = ["-m", "ledger"]
    if args.trace:
        launcher = [str(Path(__file__).parent / "fanout_trace.py"), args.trace]
    serve, port = _start([*launcher, *serve_args], r"serving on [\d.]+:(\d+)")
    servers = [serve]
    if args.compare:
        other, other_port = _start(
            ["-m", "ledger", *serve_args], r"serving on [\d.]+:(\d+)", args.compare.resolve()
        )
        servers.append(other)
    echo, echo_port = _start([str(Path(__file__)), "--echo"], r"echo serving on [\d.]+:(\d+)")
    load = os.getloadavg()
    print(
        f"ledger serve vs in-process vs bare grpcio ({size}-byte updateStatus requests), "
        f"{args.seconds:g} s a round, PostgreSQL; load average {load[0]:.2f}"
    )
    print(
        f"{'clients':>7} {'serve/s':>9} {'in-proc/s':>10} {'echo/s':>9} "
        f"{'serve/in-proc':>13} {'serve/echo':>10}  serve p50/p99 ms   in-proc p50/p99 ms"
    )
    try:
        with open_ledger(url) as ledger:
            ids = [
                ledger.create(AgentExecution(spec=AgentExecutionSpec(agent_id="b", message="m"))).id
                for _ in range(max(CONCURRENCY))
            ]
        for clients in () if args.fan_out_only else CONCURRENCY:
            mine = ids[:clients]
            served = _serve_round(port, mine, args.seconds)
            local = _in_process_round(url, mine, args.seconds)
            echoed = _echo_round(echo_port, clients, size, args.seconds)
            rates = [len(x) / args.seconds for x in (served, local, echoed)]
            s50, s99 = _percentiles(served)
            l50, l99 = _percentiles(local)
            print(
                f"{clients:>7} {rates[0]:>9.0f} {rates[1]:>10.0f} {rates[2]:>9.0f} "
                f"{rates[0] / rates[1]:>13.2f} {rates[0] / rates[2]:>10.2f}  "
                f"{s50:6.2f} / {s99:6.2f}     {l50:6.2f} / {l99:6.2f}"
            )
        print(
            f"subscribe fan-out: {args.streams} streams over 50 executions in "
            f"{args.watchers} watcher processes, {args.changes} changes each, a round of 50 "
            f"then 20 ms; latency from the write's commit (its insert returned in the "
            f"writer) to each stream's receipt"
        )
        traced: list[FanOut] = []
        variants: list[tuple[str, Any, int, Any]] = [("ledger serve", port, 0, serve.pid)]
        if args.compare:
            variants.append((args.compare.name[:13], other_port, 0, servers[1].pid))
            if args.split:
                pids = [serve.pid, servers[1].pid]
                variants.append(("2 servers", [port, other_port], 0, pids))
        if not args.no_bare:
            variants.append(("bare grpcio", 0, echo_port, echo.pid))
        schedule: list[float] | None = None
        for _ in range(args.rounds):
            for name, serve_port, bare_port, pid in variants:
                fan_out = _fan_out(
                    serve_port,
                    url,
                    args.streams,
                    args.changes,
                    args.watchers,
                    bare_port=bare_port,
                    server_pid=pid,
                    schedule=schedule if bare_port and args.bare_paced else None,
                    rate=args.rate,
                )
                if not bare_port:
                    schedule = fan_out.offsets
                received = fan_out.latencies
                p50, p99 = _percentiles(received)
                early = sum(1 for r in received if r < 0)
                print(
                    f"  {name:<13} {len(received)} deliveries, p50 {p50:6.1f} ms, "
                    f"p99 {p99:6.1f} ms (mean "
                    f"{statistics.fmean(received) * 1000 if received else 0:.1f} ms, "
                    f"{early} before the writer saw its commit), writes over "
                    f"{fan_out.writing:.2f} s ({len(received) / fan_out.writing:.0f} "
                    f"deliveries/s offered), server CPU per delivery "
                    f"{fan_out.cpu[0] / len(received) * 1e6:.0f} us (loop thread "
                    f"{fan_out.cpu[1] / len(received) * 1e6:.0f} us), "
                    f"load average {os.getloadavg()[0]:.2f}"
                )
                if serve_port == port:
                    traced.append(fan_out)
    finally:
        for process in (*servers, echo):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    if args.trace:
        import json

        from fanout_trace import breakdown

        trace = json.loads(Path(args.trace).read_text())
        for n, fan_out in enumerate(traced, 1):
            print(f"  where the time went, ledger serve round {n}:")
            until = max((at for _, _, at in fan_out.receipts), default=fan_out.began)
            for line in breakdown(trace, fan_out.commits, fan_out.receipts, fan_out.began, until):
                print(line)
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
