"""Where a `subscribe` fan-out delivery's time goes (``bench/serve.py --trace``).

``python bench/fanout_trace.py FILE serve ARGS...`` runs ``ledger serve ARGS`` with
timestamps (``time.monotonic``, one clock for every process of the machine) taken at
each stage a change crosses in the server, written to ``FILE`` (JSON) when it stops:

- ``notify``: the LISTEN thread wakes the log follower (a ``NOTIFY`` arrived);
- ``pages``: each page the follower read: when its wait ended, when the readable head
  was known (the horizon's observations), when the SELECT returned, and its events;
- ``wakes``: when the event loop ran the follower's hand-over of a page;
- ``yields``: each stream's resource handed to grpc (execution id, step), and when
  grpc had sent it (the generator resumed);
- ``lags``: overruns of a 5 ms sleep on the event loop (its wait for a CPU);
- ``gcs``: collections (generation, start, end).

:func:`breakdown` matches them with the writer's commits and the watchers' receipts.
The patches only record; the server's behaviour is unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

now = time.monotonic
Trace = dict[str, list[Any]]


def _install(trace: Trace) -> None:
    from ledger.cli.grpc_server import services, subscriptions
    from ledger.store.horizon import ReadHorizon
    from projections import subscription as polling

    class _TracedEvent(threading.Event):
        def set(self) -> None:
            if threading.current_thread().name == "ledger-listen":
                trace["notify"].append(now())
            super().set()

    original_init = polling.PollingSubscription.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._woken = _TracedEvent()

    cap_done: dict[int, float] = {}
    original_cap = ReadHorizon.cap

    def cap(self: Any, first: int, limit: int, wait: float) -> int | None:
        result = original_cap(self, first, limit, wait)
        cap_done[threading.get_ident()] = now()
        return result

    def next_page(
        self: Any, timeout: float | None = None, *, limit: int | None = None
    ) -> list[Any]:
        # PollingSubscription.next_page, with timestamps.
        started = now()
        if self._buffer:
            page, self._buffer = self._buffer, []
            return list(page)
        cap_done.pop(threading.get_ident(), None)
        page = self._select(limit)
        woken = None
        if not page and not self._has_been_stopped:
            self._woken.wait(self.poll_interval if timeout is None else timeout)
            woken = now()
            self._woken.clear()
            if self._has_been_stopped:
                return []
            cap_done.pop(threading.get_ident(), None)
            page = self._select(limit)
        if page and threading.current_thread().name == "ledger-serve-log":
            awake = woken if woken is not None else started
            trace["pages"].append(
                [
                    started,
                    woken,
                    cap_done.get(threading.get_ident(), awake),
                    now(),
                    [[str(n.originator_id), n.originator_version, n.id] for n in page],
                    page[-1].id,
                ]
            )
        return list(page)

    original_wake = subscriptions.LogFollower._wake

    def wake(self: Any, offers: Any, position: int, events: Any, everything: bool) -> None:
        trace["wakes"].append([now(), [n.id for stored in offers.values() for n in stored]])
        original_wake(self, offers, position, events, everything)

    original_start = subscriptions.LogFollower.start

    def start(self: Any) -> None:
        original_start(self)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(_lag_probe(trace)))

    original_follow = subscriptions.follow_execution

    async def follow(
        ledger: Any, follower: Any, execution_id: str, *args: Any
    ) -> AsyncIterator[Any]:
        resource: Any
        async for resource in original_follow(ledger, follower, execution_id, *args):
            step = len(resource.status.messages)
            yielded = now()
            yield resource
            trace["yields"].append([execution_id, step, yielded, now()])

    polling.PollingSubscription.__init__ = init  # type: ignore[method-assign]
    polling.PollingSubscription.next_page = next_page  # type: ignore[method-assign]
    ReadHorizon.cap = cap  # type: ignore[method-assign]
    subscriptions.LogFollower._wake = wake  # type: ignore[method-assign]
    subscriptions.LogFollower.start = start  # type: ignore[method-assign]
    setattr(services, "follow_execution", follow)  # noqa: B010

    collecting: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[:] = [now(), time.thread_time()]
        elif collecting:
            cpu = time.thread_time() - collecting[1]
            trace["gcs"].append([info["generation"], collecting[0], now(), cpu])

    gc.callbacks.append(on_gc)


async def _lag_probe(trace: Trace) -> None:
    while True:
        before = now()
        await asyncio.sleep(0.005)
        trace["lags"].append([before, now() - before - 0.005])


def serve(path: str, argv: list[str]) -> None:
    trace: Trace = {k: [] for k in ("notify", "pages", "wakes", "yields", "lags", "gcs")}
    _install(trace)
    atexit.register(lambda: Path(path).write_text(json.dumps(trace)))
    profile_path = os.environ.get("FANOUT_PROFILE")
    if profile_path:  # The event loop's thread only (cProfile follows one thread).
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

        def dump() -> None:
            profiler.disable()
            profiler.dump_stats(profile_path)

        atexit.register(dump)
    from ledger.cli import main

    sys.argv = ["ledger", *argv]
    main()


# Analysis.


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"{p50:7.1f} {p99:7.1f}"


def breakdown(
    trace: Trace,
    commits: dict[tuple[str, int], tuple[float, int]],
    receipts: list[tuple[str, int, float]],
    since: float,
    until: float,
) -> list[str]:
    """Per stage, p50 and p99 (ms) over the deliveries of one round (``commits``:
    (execution, step) -> (commit acknowledged, version); ``receipts``: the watchers')."""
    page_of: dict[tuple[str, int], list[Any]] = {}
    for page in trace["pages"]:
        if since <= page[3] <= until + 60:
            for execution_id, version, notification_id in page[4]:
                page_of.setdefault((execution_id, version), [*page[:4], notification_id])
    wake_at = {i: at for at, ids in trace["wakes"] if at >= since for i in ids}
    yielded: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for e, s, y, d in trace["yields"]:
        if y >= since:
            yielded.setdefault((e, s), []).append((y, d))
    received_by: dict[tuple[str, int], list[float]] = {}
    for execution_id, step, received in receipts:
        received_by.setdefault((execution_id, step), []).append(received)
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "commit -> follower awake",
            "awake -> readable head known (or 0)",
            "head -> page SELECT returned",
            "page -> handed to the loop",
            "loop -> stream yields",
            "yield -> grpc sent",
            "yield -> watcher receives",
            "commit -> watcher receives",
        )
    }
    for key, times in received_by.items():
        commit = commits.get(key)
        if commit is None:
            continue
        committed, version = commit
        stages["commit -> watcher receives"] += [t - committed for t in times]
        page = page_of.get((key[0], version))
        if page is None:
            continue
        started, woken, capped, returned, notification_id = page
        awake = woken if woken is not None else started
        stages["commit -> follower awake"] += [awake - committed] * len(times)
        if capped is not None and capped >= awake:
            stages["awake -> readable head known (or 0)"] += [capped - awake] * len(times)
            stages["head -> page SELECT returned"] += [returned - capped] * len(times)
        woke = wake_at.get(notification_id)
        if woke is None:
            continue
        stages["page -> handed to the loop"] += [woke - returned] * len(times)
        # Streams are not told apart: the k-th yield of a change is paired with its
        # k-th receipt.
        for (y, d), r in zip(sorted(yielded.get(key, [])), sorted(times), strict=False):
            stages["loop -> stream yields"].append(y - woke)
            stages["yield -> grpc sent"].append(d - y)
            stages["yield -> watcher receives"].append(r - y)
    lines = [f"    {'stage':<32} {'p50 ms':>7} {'p99 ms':>7}"]
    for name, values in stages.items():
        lines.append(f"    {name:<32} {_percentiles(values)}  ({len(values)})")
    lags = [lag for at, lag in trace["lags"] if since <= at <= until]
    gcs = [(g, end - start, cpu) for g, start, end, cpu in trace["gcs"] if since <= start <= until]
    lines.append(
        f"    loop 5 ms sleep overrun: {_percentiles(lags)}; collections: "
        + ", ".join(
            f"gen{g} x{sum(1 for x, _, _ in gcs if x == g)} max "
            f"{max((d for x, d, _ in gcs if x == g), default=0) * 1000:.1f} ms (CPU "
            f"{max((c for x, _, c in gcs if x == g), default=0) * 1000:.1f} ms)"
            for g in (0, 1, 2)
        )
    )
    return lines


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
