"""Catch-up: rebuilding the status view over N ledger events on PostgreSQL, beside raw psycopg.

    .venv/bin/python bench/catchup.py [--events 1000000] [--page-size 5000] [--url URL]

1. **Events.** N ledger events are generated quickly: realistic lifecycles
   (``Created``, one to four ``StatusChanged``, then ``Completed`` as COMPLETED,
   FAILED or CANCELLED; a few stay in flight), about a hundred executions in
   flight at once so their events interleave. Each distinct lifecycle shape is
   produced once through the real domain model and encoded by the Ledger's own
   mapper; every execution then gets its own id, timestamps and org/labels
   variant, and the stored events are written with ``COPY`` into the Ledger's
   events table (so the view reads exactly what the Ledger would have stored).
2. **View rebuild.** :meth:`projections.views.Views.rebuild` of the status view,
   as ``ledger projections rebuild status`` runs it (start-up objects frozen out
   of the garbage collector's way first, :func:`projections.views.freeze_startup_objects`):
   reads the log with the subscription in pages (the views' default page size),
   decodes, writes one transaction per page (rows, labels, counts, position).
   Measured twice: decoding only what the view needs from the stored JSON (the
   default), and through the library's mapper (whole events, with upcasting).
3. **Raw psycopg.** In the same run, the same work written by hand, with the
   same techniques as the view: a keyset read of the same rows (``WHERE
   notification_id > %s ORDER BY notification_id LIMIT page``, tuple rows), and
   for each page one transaction (``synchronous_commit = off``, as the view's)
   writing, into tables of the view's shape and indexes (``LIKE ... INCLUDING
   ALL``), the same rows as the view (phase from the event's topic, version from
   the event, the rest from the view's final row, so no decoding at all) with the
   view's statements and binary parameters: the executions created in the page
   inserted by one ``unnest`` statement that inserts their label rows too, the
   others updated by one ``UPDATE ... FROM unnest``. It checks that it wrote as
   many rows as the view, and is measured after each rebuild and averaged.

Peak memory is the process's peak resident set during each rebuild (Linux
``VmHWM``, reset before each run via ``/proc/self/clear_refs``) and its rise over
the resident set at the start, which must not grow with N. Client CPU is this
process's CPU time per event (steadier than wall time on a busy machine; the
server's work is not in it). Everything happens in a fresh schema, dropped at
the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from eventsourcing.utils import get_topic
from psycopg import sql

from ledger.api.commons.v1 import metadata_pb2
from ledger.application import Ledger, open_ledger_with
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecutionSpec,
    AgentExecutionStatus,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.store.url import StoreConfig, parse_url
from projections.views import DEFAULT_PAGE_SIZE, Views, freeze_startup_objects

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
IN_FLIGHT = 100
"""Executions in flight at once: their events interleave in the log."""
SENTINEL = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


# Generating events.


@dataclass(frozen=True)
class Template:
    """One lifecycle shape: its stored events with a placeholder id and timestamp."""

    prefix: str
    events: list[tuple[str, bytes]]
    """(topic, state) per event; the state holds SENTINEL's ISO text as its time."""


def _metadata(org: str, labels: dict[str, str]) -> metadata_pb2.ApiResourceMetadata:
    metadata = metadata_pb2.ApiResourceMetadata(name="bench", org=org)
    for key, value in labels.items():
        metadata.labels[key] = value
    return metadata


def _patches(kind_name: str, steps: int) -> list[Any]:
    """``steps`` status patches: IN_PROGRESS first, then progress."""
    agent = kind_name == "AgentExecution"
    status_class: Any = AgentExecutionStatus if agent else WorkflowExecutionStatus
    patches = []
    for step in range(steps):
        patch = status_class()
        if step == 0:
            patch.phase = int(Phase.IN_PROGRESS)
        elif agent:
            message = patch.messages.add()
            message.content = f"Working on step {step}: looking at the incident tracker."
            message.timestamp = "2025-01-01T00:00:01Z"
        else:
            task = patch.tasks.add()
            task.task_id = f"task-{step}"
            task.task_name = "fetch"
        patches.append(patch)
    return patches


def templates(ledger: Ledger, rng: random.Random) -> list[Template]:
    """Lifecycle shapes through the real domain model, encoded by the Ledger's mapper."""
    shapes: list[Template] = []
    token = os.urandom(300)
    for kind in (AGENT_EXECUTION, WORKFLOW_EXECUTION):
        for org_index in range(4):
            for ending in ("complete", "fail", "cancel", "complete", "complete", None):
                steps = rng.randint(1, 4) if ending != "cancel" else rng.randint(0, 2)
                labels = {"env": rng.choice(["prod", "staging"]), "team": f"t{org_index}"}
                spec: Any
                if kind is AGENT_EXECUTION:
                    spec = AgentExecutionSpec(
                        agent_id=f"agt-{org_index}",
                        session_id="ses-bench",
                        message="Summarize the open incidents and draft a status update.",
                    )
                else:
                    spec = WorkflowExecutionSpec(
                        workflow_id=f"wfl-{org_index}",
                        workflow_instance_id=f"wfi-{org_index}",
                        trigger_message="nightly",
                    )
                if rng.random() < 0.8:
                    spec.callback_token = token
                execution = Execution.create(
                    f"{kind.id_prefix}-template",
                    kind,
                    _metadata(f"org-{org_index}", labels),
                    spec,
                    actor="bench",
                )
                for patch in _patches(kind.name, steps):
                    execution.record_status(patch, actor="bench")
                if ending == "complete":
                    execution.complete({"summary": "done", "items": 3}, actor="bench")
                elif ending == "fail":
                    execution.fail("the tool timed out", details={"tool": "search"}, actor="bench")
                elif ending == "cancel":
                    execution.cancel("superseded", actor="bench")
                events = []
                for event in execution.collect_events():
                    object.__setattr__(event, "timestamp", SENTINEL)
                    stored = ledger.mapper.to_stored_event(event)
                    events.append((stored.topic, stored.state))
                shapes.append(Template(kind.id_prefix, events))
    return shapes


def generate(ledger: Ledger, n_events: int, seed: int = 7) -> Iterator[tuple[str, int, str, bytes]]:
    """(originator_id, version, topic, state) for ``n_events`` events, in log order."""
    rng = random.Random(seed)
    shapes = templates(ledger, rng)
    sentinel = SENTINEL.isoformat().encode()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    emitted = 0
    serial = 0
    while emitted < n_events:
        # A wave of executions in flight: step k of each, then step k+1 ...
        wave = []
        for _ in range(IN_FLIGHT):
            shape = rng.choice(shapes)
            wave.append((f"{shape.prefix}-b{serial:012d}", shape))
            serial += 1
        step = 0
        while emitted < n_events:
            progressed = False
            for execution_id, shape in wave:
                if step >= len(shape.events) or emitted >= n_events:
                    continue
                progressed = True
                topic, state = shape.events[step]
                at = (start + timedelta(milliseconds=emitted)).isoformat().encode()
                yield execution_id, step + 1, topic, state.replace(sentinel, at)
                emitted += 1
            if not progressed:
                break
            step += 1


def load_events(conn: psycopg.Connection[Any], schema: str, rows: Iterator[Any]) -> int:
    table = sql.Identifier(schema, "ledger_events")
    copy = sql.SQL(
        "COPY {table} (originator_id, originator_version, topic, state) FROM STDIN"
    ).format(table=table)
    count = 0
    with conn.cursor() as cursor, cursor.copy(copy) as writer:
        for row in rows:
            writer.write_row(row)
            count += 1
    conn.execute(sql.SQL("ANALYZE {table}").format(table=table))
    return count


# Measuring.


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    peak_mb: float | None = None
    growth_mb: float | None = None
    """Peak RSS during the run minus RSS when it started."""
    cpu_seconds: float | None = None
    """CPU time of this (client) process during the run."""

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def rebuild(views: Views, *, fast: bool, label: str) -> Result:
    views.logs["Ledger"].fast = fast

    def progress(done: int, total: int) -> None:
        """Called per page, as the CLI's progress bar is."""

    freeze_startup_objects()  # As `ledger projections rebuild` does.
    reset_peak_rss()
    before = rss_mb()
    cpu = time.process_time()
    began = time.perf_counter()
    processed = views.rebuild("status", progress)
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu
    return Result(label, processed, seconds, peak_rss_mb(), peak_rss_mb() - before, cpu)


def raw(url: str, schema: str, page_size: int) -> tuple[Result, Result, Result]:
    """Raw psycopg: keyset read, and per page one transaction writing the same rows.

    Per page, for each execution it touches, the row as of its last event in the
    page (phase from the event's topic: Created -> PENDING, StatusChanged ->
    IN_PROGRESS, Completed -> the final phase; version = the event's version;
    the other columns from the view's final row), and the label rows of the
    executions created in the page: the same row writes as the view, without
    decoding, with the same statements: the executions created in the page
    inserted by one ``unnest`` statement that also inserts their label rows (from
    the rows' labels column), the others updated by one ``UPDATE ... FROM unnest``.
    """
    events = sql.Identifier(schema, "ledger_events")
    columns = (
        "id, kind, phase, agent_id, workflow_id, workflow_instance_id, org, labels, "
        "created_at, updated_at, completed_at, has_callback, version, "
        "cancel_requested_at, caller_gone_at, deleted"
    )
    types = (
        "text, text, text, text, text, text, text, text, "
        "timestamptz, timestamptz, timestamptz, boolean, bigint, "
        "timestamptz, timestamptz, boolean"
    )
    arrays = ", ".join(f"%b::{t.strip()}[]" for t in types.split(","))
    ident = {
        "view": sql.Identifier(schema, "view_status"),
        "view_labels": sql.Identifier(schema, "view_status_labels"),
        "target": sql.Identifier(schema, "raw_status"),
        "target_labels": sql.Identifier(schema, "raw_status_labels"),
    }
    created_topic = get_topic(Execution.Created)
    completed_topic = get_topic(Execution.Completed)
    with psycopg.connect(url, autocommit=True) as conn:
        for source, target in (("view", "target"), ("view_labels", "target_labels")):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {target}").format(target=ident[target]))
            conn.execute(
                sql.SQL("CREATE TABLE {target} (LIKE {source} INCLUDING ALL)").format(
                    target=ident[target], source=ident[source]
                )
            )
        final = {
            row[0]: row
            for row in conn.execute(sql.SQL(f"SELECT {columns} FROM {{view}}").format(**ident))
        }
        select = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {events} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(events=events)
        insert_new = sql.SQL(
            f"WITH created AS (INSERT INTO {{target}} AS a ({columns}) "
            f"SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO NOTHING "
            "RETURNING id, labels, created_at) "
            "INSERT INTO {target_labels} (execution_id, key, value, created_at) "
            "SELECT c.id, l.key, l.value, c.created_at "
            "FROM created c, json_each_text(c.labels::json) AS l "
            "ON CONFLICT DO NOTHING"
        ).format(**ident)
        update_existing = sql.SQL(
            "UPDATE {target} AS a SET phase = u.phase, labels = u.labels, "
            "updated_at = u.updated_at, completed_at = u.completed_at, "
            "cancel_requested_at = u.cancel_requested_at, caller_gone_at = u.caller_gone_at, "
            "deleted = u.deleted, version = u.version "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], "
            "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::boolean[], "
            "%b::bigint[]) AS u(id, phase, labels, updated_at, completed_at, "
            "cancel_requested_at, caller_gone_at, deleted, version) "
            "WHERE a.id = u.id AND a.version < u.version"
        ).format(**ident)

        def read_pages() -> Iterator[list[tuple[Any, ...]]]:
            position = 0
            while True:
                page = conn.execute(select, (position, page_size), prepare=True).fetchall()
                if not page:
                    return
                position = page[-1][0]
                yield page

        def rows_of(page: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
            last: dict[str, tuple[int, str]] = {}
            created_here: set[str] = set()
            for _, execution_id, version, topic, _state in page:
                last[execution_id] = (version, topic)
                if version == 1:
                    created_here.add(execution_id)
            new_rows = []
            updates = []
            for execution_id in sorted(last):
                version, topic = last[execution_id]
                row = final[execution_id]
                if topic == created_topic:
                    phase, completed_at = "EXECUTION_PENDING", None
                elif topic == completed_topic:
                    phase, completed_at = row[2], row[10]
                else:
                    phase, completed_at = "EXECUTION_IN_PROGRESS", None
                updated_at = row[8] + timedelta(milliseconds=version)
                if execution_id in created_here:
                    new_rows.append(
                        (
                            *row[:2],
                            phase,
                            *row[3:9],
                            updated_at,
                            completed_at,
                            row[11],
                            version,
                            None,
                            None,
                            False,
                        )
                    )
                else:
                    updates.append(
                        (
                            execution_id,
                            phase,
                            row[7],
                            updated_at,
                            completed_at,
                            None,
                            None,
                            False,
                            version,
                        )
                    )
            return new_rows, updates

        def columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
            return [[row[i] for row in rows] for i in range(width)]

        # Read only.
        count = 0
        cpu = time.process_time()
        began = time.perf_counter()
        for page in read_pages():
            count += len(page)
        read_seconds = time.perf_counter() - began
        read_cpu = time.process_time() - cpu

        # Read, then per page one transaction writing the rows it touches.
        write_seconds = 0.0
        count = 0
        cpu = time.process_time()
        began = time.perf_counter()
        for page in read_pages():
            count += len(page)
            new_rows, updates = rows_of(page)
            t = time.perf_counter()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")  # As the view does.
                if new_rows:
                    conn.execute(insert_new, columns_of(new_rows, 16))
                if updates:
                    conn.execute(update_existing, columns_of(updates, 9))
            write_seconds += time.perf_counter() - t
        both_seconds = time.perf_counter() - began
        both_cpu = time.process_time() - cpu
        # The same rows as the view's (so the same work was done).
        for table, target in (("view", "target"), ("view_labels", "target_labels")):
            same = sql.SQL("SELECT (SELECT count(*) FROM {a}), (SELECT count(*) FROM {b})")
            counted = conn.execute(same.format(a=ident[table], b=ident[target])).fetchone()
            assert counted is not None and counted[0] == counted[1], (table, counted)
    return (
        Result(
            "raw psycopg: keyset read + same row writes",
            count,
            both_seconds,
            cpu_seconds=both_cpu,
        ),
        Result("  of which keyset read alone", count, read_seconds, cpu_seconds=read_cpu),
        Result("  of which the writes alone", count, write_seconds),
    )


def average(results: Sequence[Result]) -> Result:
    """One result from runs of the same thing (total events over total time)."""
    cpu = [r.cpu_seconds for r in results if r.cpu_seconds is not None]
    return Result(
        results[0].name,
        sum(r.events for r in results) // len(results),
        sum(r.seconds for r in results) / len(results),
        cpu_seconds=sum(cpu) / len(cpu) if cpu else None,
    )


def config_for(url: str, schema: str) -> StoreConfig:
    return parse_url(f"{url}?schema={schema}")


def run(url: str, n_events: int, page_size: int, mapper_too: bool) -> None:
    schema = "bench_catchup_" + uuid.uuid4().hex[:8]
    config = config_for(url, schema)
    started = time.perf_counter()
    try:
        ledger = open_ledger_with(config)
        with psycopg.connect(url, autocommit=True) as conn:
            t = time.perf_counter()
            loaded = load_events(conn, schema, generate(ledger, n_events))
            generated = time.perf_counter() - t
        ledger.close()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"generated {loaded:,} ledger events in {generated:.1f} s "
            f"({loaded / generated:,.0f} events/s, COPY), schema {schema}; "
            f"{os.cpu_count()} CPUs, load average {load}\n"
        )
        views = Views(config, page_size=page_size)
        try:
            results = [rebuild(views, fast=True, label="status view rebuild (fast decode)")]
            raw_runs = [raw(url, schema, page_size)]
            if mapper_too:
                results.append(
                    rebuild(views, fast=False, label="status view rebuild (library mapper)")
                )
                raw_runs.append(raw(url, schema, page_size))
            rows = len(views.status.snapshot()) if n_events <= 200_000 else None
            counts = views.status.counts_by_phase()
        finally:
            views.close()
        print_table(results, [average(parts) for parts in zip(*raw_runs, strict=True)], page_size)
        executions = sum(counts.values())
        print(
            f"\n{executions:,} executions in the view"
            + (f" ({rows:,} rows read back)" if rows is not None else "")
            + f"; by phase: {counts}"
        )
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    print(f"total {time.perf_counter() - started:.0f} s; schema {schema} dropped")


def print_table(results: Sequence[Result], raw_results: Sequence[Result], page_size: int) -> None:
    baseline = raw_results[0].per_second
    header = (
        f"{'run':<46} {'events':>10} {'seconds':>8} {'events/s':>10} {'vs raw':>7} "
        f"{'client CPU':>10} {'peak RSS':>9} {'growth':>7}"
    )
    print(header)
    print("-" * len(header))
    for result in [*results, *raw_results]:
        ratio = f"{result.per_second / baseline:.2f}" if not result.name.startswith(" ") else ""
        peak = f"{result.peak_mb:.0f} MB" if result.peak_mb is not None else ""
        growth = f"{result.growth_mb:+.0f} MB" if result.growth_mb is not None else ""
        cpu = (
            f"{result.cpu_seconds / result.events * 1e6:.1f} us/ev"
            if result.cpu_seconds is not None
            else ""
        )
        print(
            f"{result.name:<46} {result.events:>10,} {result.seconds:>8.2f} "
            f"{result.per_second:>10,.0f} {ratio:>7} {cpu:>10} {peak:>9} {growth:>7}"
        )
    print(
        f"\npage size {page_size} events (one transaction per page in every run); raw "
        "psycopg is measured after each rebuild and averaged; peak RSS is the process's "
        "peak resident set during that rebuild, growth its rise over the RSS at its start; "
        "client CPU is this process's CPU time per event (the server's is not included)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="ledger events (1,000,000)")
    parser.add_argument(
        "--page-size",
        type=int,
        default=DEFAULT_PAGE_SIZE,
        help=f"events per page (the views' default, {DEFAULT_PAGE_SIZE})",
    )
    parser.add_argument(
        "--no-mapper", action="store_true", help="skip the rebuild through the library's mapper"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("LEDGER_BENCH_POSTGRES")
        or os.environ.get("LEDGER_TEST_POSTGRES")
        or DEFAULT_URL,
        help="PostgreSQL server (a fresh schema is created in it and dropped afterwards)",
    )
    args = parser.parse_args(argv)
    run(args.url, args.events, args.page_size, mapper_too=not args.no_mapper)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
