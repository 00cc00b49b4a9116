"""Lifecycles per second on PostgreSQL: the Ledger API beside raw psycopg.

A lifecycle is five commands: create an AgentExecution (with a callback token),
three ``update_status`` patches, ``complete``. Each command appends one event,
so a lifecycle is five insert transactions. Measured in the same run:

- ``raw psycopg``: five autocommit single-row ``INSERT`` statements (prepared)
  into a table of the same shape as the events table (text ``originator_id``,
  bigint version, text topic, bytea state of the sizes our real events have,
  bigserial ``notification_id``, the same primary key and unique index).
- ``ledger, library recorder``: the Ledger API with the ``eventsourcing``
  library's PostgreSQL recorder as shipped (a pipeline with LOCK TABLE and
  NOTIFY per transaction, and a read of the aggregate per command).
- ``ledger, one round trip``: the Ledger API with
  :class:`ledger.recorder.LedgerPostgresApplicationRecorder` and the aggregate
  cache (no fast-forward read), see :data:`FAST_ENV`.
- ``(recorder alone)``: for diagnosis, the same five rows through that
  recorder's ``insert_events`` without any Ledger code: the gap between it and
  raw psycopg is the persistence layer's, the rest is the application's.
- ``(recorder alone, NOTIFY in insert)``: the same with a ``NOTIFY`` inside every
  insert, as round 1 did (``notify_in_insert``), to show what PostgreSQL's
  notification commit lock costs writers (:mod:`ledger.store.wakeups`).

Each is run with each of ``--threads`` thread counts (default 1, 4 and 16; each
thread with executions of its own, and a connection of its own in every pool),
for ``--seconds`` each, cut into ``--slices`` slices that alternate between the
variants so that all of them see the same load. Everything happens in fresh
schemas, dropped at the end. The machine's load average is printed with the
figures.

    .venv/bin/python bench/lifecycles.py [--seconds N] [--threads 1,4,16] [--url URL]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from psycopg import sql

from ledger.api.agentexecution.v1 import enum_pb2
from ledger.application import Ledger, open_ledger_with
from ledger.contract.kinds import API_VERSION, AgentExecution, AgentExecutionStatus
from ledger.store.recorder import LedgerPostgresApplicationRecorder
from ledger.store.url import StoreConfig, parse_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COMMANDS_PER_LIFECYCLE = 5
CALLBACK_TOKEN_BYTES = 300
"""About the size of a Temporal activity task token."""

FAST_ENV: dict[str, str] = {
    "APPLICATION_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresApplicationRecorder",
    "PROCESS_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresProcessRecorder",
    "AGGREGATE_CACHE_MAXSIZE": "1000",
    "AGGREGATE_CACHE_FASTFORWARD": "n",
}
"""The variables that select the one-round-trip recorder and the aggregate cache."""

Lifecycle = Callable[[], None]
"""Runs one lifecycle (five insert transactions)."""


# The lifecycle through the Ledger API.


def new_resource() -> AgentExecution:
    resource = AgentExecution(api_version=API_VERSION, kind="AgentExecution")
    resource.metadata.name = "bench"
    resource.metadata.org = "org-bench"
    resource.spec.agent_id = "agt-bench"
    resource.spec.session_id = "ses-bench"
    resource.spec.message = "Summarize the open incidents and draft a status update."
    resource.spec.execution_config.model_name = "model-x"
    resource.spec.callback_token = os.urandom(CALLBACK_TOKEN_BYTES)
    return resource


def status_patches() -> list[AgentExecutionStatus]:
    started = AgentExecutionStatus(phase=enum_pb2.EXECUTION_IN_PROGRESS)
    started.started_at = "2025-01-01T00:00:00Z"
    thinking = AgentExecutionStatus()
    message = thinking.messages.add()
    message.type = enum_pb2.MESSAGE_AI
    message.content = "Looking at the incident tracker."
    message.timestamp = "2025-01-01T00:00:01Z"
    tool = AgentExecutionStatus()
    call = tool.tool_calls.add()
    call.id = "call-1"
    call.name = "search_incidents"
    call.status = enum_pb2.TOOL_CALL_COMPLETED
    call.result = "3 open incidents"
    return [started, thinking, tool]


def ledger_lifecycle(ledger: Ledger) -> Lifecycle:
    patches = status_patches()

    def run() -> None:
        record = ledger.create(new_resource())
        for patch in patches:
            ledger.update_status(record.id, patch)
        done = ledger.complete(record.id, {"summary": "3 open incidents", "drafted": True})
        assert done.version == COMMANDS_PER_LIFECYCLE, done.version

    return run


@dataclass(frozen=True)
class EventShape:
    topic: str
    state_size: int


def event_shapes() -> tuple[int, list[EventShape]]:
    """The id length, topics and state sizes of one real lifecycle's events."""
    ledger = open_ledger_with(parse_url("memory://"))
    try:
        ledger_lifecycle(ledger)()
        notifications = ledger.notification_log.select(start=1, limit=10)
        id_length = len(str(notifications[0].originator_id))
        return id_length, [EventShape(n.topic, len(n.state)) for n in notifications]
    finally:
        ledger.close()


# The raw psycopg baseline.


RAW_TABLE = "raw_events"


def create_raw_table(conn: psycopg.Connection[Any], schema: str) -> None:
    table = sql.Identifier(schema, RAW_TABLE)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {table} ("
            "originator_id text NOT NULL, "
            "originator_version bigint NOT NULL, "
            "topic text, "
            "state bytea, "
            "notification_id bigserial, "
            "PRIMARY KEY (originator_id, originator_version))"
        ).format(table=table)
    )
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX {index} ON {table} (notification_id ASC)").format(
            index=sql.Identifier(RAW_TABLE + "_notification_id_idx"), table=table
        )
    )


def raw_lifecycle(
    conn: psycopg.Connection[Any], schema: str, id_length: int, shapes: Sequence[EventShape]
) -> Lifecycle:
    insert = sql.SQL(
        "INSERT INTO {table} (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, %s, %s)"
    ).format(table=sql.Identifier(schema, RAW_TABLE))
    states = [(shape.topic, os.urandom(shape.state_size)) for shape in shapes]

    def run() -> None:
        originator_id = ("aex-" + uuid.uuid4().hex * 2)[:id_length]
        for version, (topic, state) in enumerate(states, start=1):
            conn.execute(insert, (originator_id, version, topic, state), prepare=True)

    return run


def recorder_lifecycle(
    recorder: ApplicationRecorder, id_length: int, shapes: Sequence[EventShape]
) -> Lifecycle:
    """The same five rows through the recorder alone: no Ledger code, no reads."""
    states = [(shape.topic, os.urandom(shape.state_size)) for shape in shapes]

    def run() -> None:
        originator_id = ("aex-" + uuid.uuid4().hex * 2)[:id_length]
        for version, (topic, state) in enumerate(states, start=1):
            recorder.insert_events([StoredEvent(originator_id, version, topic, state)])

    return run


# Measuring.


@dataclass(frozen=True)
class Result:
    lifecycles: int
    seconds: float
    threads: int

    @property
    def per_second(self) -> float:
        return self.lifecycles / self.seconds

    @property
    def ms_per_command(self) -> float:
        """Mean wall time of one command as seen by the thread that ran it."""
        commands = self.lifecycles * COMMANDS_PER_LIFECYCLE
        return 1000.0 * self.seconds * self.threads / commands


def warm_up(lifecycles: Sequence[Lifecycle]) -> None:
    """Connections, prepared statements, caches."""
    for lifecycle in lifecycles:
        for _ in range(3):
            lifecycle()


def measure(lifecycles: Sequence[Lifecycle], seconds: float) -> Result:
    """Runs each lifecycle function in a thread of its own for ``seconds``."""
    counts = [0] * len(lifecycles)
    errors: list[BaseException] = []
    start = threading.Barrier(len(lifecycles) + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        start.wait()
        try:
            while not stop.is_set():
                lifecycles[index]()
                counts[index] += 1
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(lifecycles))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return Result(lifecycles=sum(counts), seconds=elapsed, threads=len(lifecycles))


def compare(
    variants: Mapping[str, Sequence[Lifecycle]], seconds: float, slices: int
) -> dict[str, Result]:
    """Measures each variant for ``seconds`` in total, in ``slices`` interleaved slices.

    Interleaving (with the order rotated every slice) exposes every variant to
    the same background load, so the ratios hold even on a busy machine.
    """
    for lifecycles in variants.values():
        warm_up(lifecycles)
    names = list(variants)
    totals = {
        name: Result(lifecycles=0, seconds=0.0, threads=len(variants[name])) for name in names
    }
    for index in range(slices):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            result = measure(variants[name], seconds / slices)
            total = totals[name]
            totals[name] = Result(
                lifecycles=total.lifecycles + result.lifecycles,
                seconds=total.seconds + result.seconds,
                threads=total.threads,
            )
    return totals


@contextmanager
def schemas(url: str, names: Sequence[str]) -> Iterator[None]:
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )


def ledger_config(
    url: str, schema: str, extra: Mapping[str, str], *, fast: bool, pool: int = 8
) -> StoreConfig:
    config = parse_url(f"{url}?schema={schema}")
    env = {k: v for k, v in config.env.items() if k not in FAST_ENV}
    if fast:
        env.update(extra)
    env["POSTGRES_POOL_SIZE"] = str(pool)
    env["POSTGRES_MAX_OVERFLOW"] = "2"
    return StoreConfig(url=config.url, scheme=config.scheme, env=env)


LIBRARY_THREADS = 4
RAW = "raw psycopg (5 autocommit INSERTs)"
LIBRARY = "ledger, library recorder"
FAST = "ledger, one round trip + cache"
RECORDER = "(recorder alone, 5 insert_events)"
NOTIFYING = "(recorder alone, NOTIFY in insert)"


class NotifyingRecorder(LedgerPostgresApplicationRecorder):
    notify_in_insert = True


def run(
    url: str, seconds: float, thread_counts: Sequence[int], slices: int
) -> list[tuple[str, int, Result, float]]:
    """Returns rows of (variant, threads, result, raw lifecycles/s of the same threads)."""
    base = "bench_" + uuid.uuid4().hex[:8]
    raw_schema, lib_schema, fast_schema = base + "_raw", base + "_lib", base + "_fast"
    id_length, shapes = event_shapes()
    rows: list[tuple[str, int, Result, float]] = []
    with schemas(url, [raw_schema, lib_schema, fast_schema]):
        with psycopg.connect(url, autocommit=True) as conn:
            create_raw_table(conn, raw_schema)
        threads = max(thread_counts)
        # The library's recorder (a table lock per insert) only up to LIBRARY_THREADS:
        # it does not scale, and connections are scarce on a shared server.
        library = open_ledger_with(
            ledger_config(url, lib_schema, FAST_ENV, fast=False, pool=LIBRARY_THREADS)
        )
        fast = open_ledger_with(ledger_config(url, fast_schema, FAST_ENV, fast=True, pool=threads))
        raw_conns = [psycopg.connect(url, autocommit=True) for _ in range(threads)]
        assert isinstance(fast.recorder, LedgerPostgresApplicationRecorder)
        notifying = NotifyingRecorder(fast.recorder.datastore, events_table_name="notifying_events")
        notifying.create_table()
        try:
            for n in sorted(set(thread_counts)):
                results = compare(
                    {
                        RAW: [
                            raw_lifecycle(c, raw_schema, id_length, shapes) for c in raw_conns[:n]
                        ],
                        **(
                            {LIBRARY: [ledger_lifecycle(library) for _ in range(n)]}
                            if n <= LIBRARY_THREADS
                            else {}
                        ),
                        FAST: [ledger_lifecycle(fast) for _ in range(n)],
                        RECORDER: [
                            recorder_lifecycle(fast.recorder, id_length, shapes) for _ in range(n)
                        ],
                        NOTIFYING: [
                            recorder_lifecycle(notifying, id_length, shapes) for _ in range(n)
                        ],
                    },
                    seconds,
                    slices,
                )
                baseline = results[RAW].per_second
                rows.extend((name, n, result, baseline) for name, result in results.items())
        finally:
            for conn in raw_conns:
                conn.close()
            library.close()
            fast.close()
    return rows


def print_table(rows: Sequence[tuple[str, int, Result, float]]) -> None:
    header = f"{'variant':<36} {'threads':>7} {'lifecycles/s':>13} {'ms/command':>11} {'vs raw':>7}"
    print(header)
    print("-" * len(header))
    for name, threads, result, baseline in rows:
        print(
            f"{name:<36} {threads:>7} {result.per_second:>13.1f} "
            f"{result.ms_per_command:>11.3f} {result.per_second / baseline:>7.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="seconds measured per variant and thread count (default 5)",
    )
    parser.add_argument(
        "--threads",
        default="1,4,16",
        help="comma-separated thread counts measured (default 1,4,16)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=5,
        help="interleaved slices each measurement is cut into (default 5)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("LEDGER_BENCH_POSTGRES")
        or os.environ.get("LEDGER_TEST_POSTGRES")
        or DEFAULT_URL,
        help="PostgreSQL server (a fresh schema is created in it and dropped afterwards)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        thread_counts = sorted({max(1, int(n)) for n in args.threads.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--threads: expected numbers separated by commas, not {args.threads!r}")
    load_before = os.getloadavg()
    rows = run(args.url, args.seconds, thread_counts, max(1, args.slices))
    load_after = os.getloadavg()
    print_table(rows)
    print(
        "\nload average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in load_after)
        + f"; {os.cpu_count()} CPUs"
    )
    print(
        f"\n{COMMANDS_PER_LIFECYCLE} commands (one event each) per lifecycle; ms/command is "
        "the mean time per command seen by each thread; 'vs raw' divides lifecycles/s by "
        "raw psycopg's with the same number of threads, measured in interleaved slices. "
        f"Total {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
