"""The execution status view: one row per execution, kept from the ledger's log.

Tables (in the views store, see :mod:`projections.views`):

- ``view_status``: id, kind, phase (the platform's spelling, e.g.
  ``EXECUTION_COMPLETED``), agent_id / workflow_id / workflow_instance_id (from
  the spec, NULL when not set), org, labels (a JSON object), created_at,
  updated_at (the last event's time), completed_at, has_callback (the spec has a
  ``callback_token``), version (events so far).
- ``view_status_labels``: one row per label of each execution, with the
  execution's created_at, for listing by label.
- ``view_status_counts``: executions per (kind, phase), kept in the same
  transactions as the rows, so counting never scans.

Listing is newest first by ``(created_at, id)`` with keyset pagination; the
indexes are ``(created_at, id)``, ``(phase, created_at, id)``,
``(org, created_at, id)`` and, for labels, ``(key, value, created_at,
execution_id)``, so a page of any listing is an index range scan however many
rows there are. A kind filter (two kinds, each about half the rows) rides the
first index.

Every query is a fixed SQL text with parameters; filter values never become SQL.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from eventsourcing.persistence import Notification

from ledger.contract.kinds import AgentExecutionSpec, WorkflowExecutionSpec
from ledger.contract.names import (
    COMPLETED_TOPICS,
    CREATED_TOPICS,
    LEDGER_LOG,
    STATUS_CHANGED_TOPICS,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from projections.views._dialects import Tx, ViewRecorder, ViewSchema, as_utc
from projections.views._follower import View
from projections.views._logs import PHASE_NAMES, LogReader, iso_value, pb_value, timestamp_and_phase

CREATED = frozenset(CREATED_TOPICS)
"""Topics of an execution's ``Created`` event (current and round-1 names)."""
STATUS_CHANGED = frozenset(STATUS_CHANGED_TOPICS)
"""Topics of ``StatusChanged``."""
COMPLETED = frozenset(COMPLETED_TOPICS)
"""Topics of ``Completed``."""

MAX_LIMIT = 1000
"""The largest page :meth:`StatusView.list` returns."""


@dataclass(frozen=True)
class ExecutionRow:
    """One execution as the status view shows it."""

    id: str
    kind: str
    phase: str
    """The platform's spelling, e.g. ``EXECUTION_IN_PROGRESS``."""
    agent_id: str | None
    workflow_id: str | None
    workflow_instance_id: str | None
    org: str | None
    labels: dict[str, str] = field(hash=False)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    has_callback: bool
    version: int


# Decoded events: only what the view needs (slotted, not frozen: a catch-up makes one
# per event, and a frozen dataclass's __init__ costs three times as much).


@dataclass(slots=True)
class _Created:
    version: int
    timestamp: datetime
    kind: str
    org: str | None
    labels: dict[str, str]
    agent_id: str | None
    workflow_id: str | None
    workflow_instance_id: str | None
    has_callback: bool


@dataclass(slots=True)
class _PhaseChanged:
    version: int
    timestamp: datetime
    phase: int
    """0 when the event changed no phase."""
    completed: bool


_Fact = _Created | _PhaseChanged


def _created(version: int, timestamp: datetime, kind: str, metadata: Any, spec: Any) -> _Created:
    agent_id = workflow_id = workflow_instance_id = None
    if isinstance(spec, AgentExecutionSpec):
        agent_id = spec.agent_id or None
    elif isinstance(spec, WorkflowExecutionSpec):
        workflow_id = spec.workflow_id or None
        workflow_instance_id = spec.workflow_instance_id or None
    return _Created(
        version=version,
        timestamp=timestamp,
        kind=kind,
        org=metadata.org or None,
        labels=dict(metadata.labels),
        agent_id=agent_id,
        workflow_id=workflow_id,
        workflow_instance_id=workflow_instance_id,
        has_callback=bool(spec.callback_token),
    )


_PHASE_TOPICS = STATUS_CHANGED | COMPLETED
_KNOWN_TOPICS = CREATED | STATUS_CHANGED | COMPLETED


def decode_fact(
    log: LogReader, notification: Notification, plain: Collection[str] = ()
) -> _Fact | None:
    """What one ledger event tells the status view (None: not an event it knows).

    ``plain``: topics whose stored state is known to be the library's plain JSON
    (:meth:`LogReader.plain_topics`), read without any further check.
    """
    topic = notification.topic
    if topic not in _KNOWN_TOPICS:
        return None
    version = notification.originator_version
    data = notification.state if topic in plain else log.data(notification)
    if data is not None and topic not in CREATED:
        quick = timestamp_and_phase(data)
        if quick is not None:
            return _PhaseChanged(version, quick[0], quick[1], topic in COMPLETED)
    state = log.parse(data) if data is not None else None
    if state is not None:
        timestamp = iso_value(state["timestamp"])
        if topic in CREATED:
            return _created(
                version,
                timestamp,
                state["kind"],
                pb_value(state["metadata"]),
                pb_value(state["spec"]),
            )
        return _PhaseChanged(version, timestamp, int(state["phase"]), topic in COMPLETED)
    event = log.event(notification)
    if isinstance(event, Execution.Created):
        return _created(version, event.timestamp, event.kind, event.metadata, event.spec)
    if isinstance(event, (Execution.StatusChanged, Execution.Completed)):
        return _PhaseChanged(
            version, event.timestamp, int(event.phase), isinstance(event, Execution.Completed)
        )
    return None


@dataclass(slots=True)
class _Row:
    """An execution's changing columns while a page is applied (times as stored)."""

    kind: str
    phase: int
    completed_at: Any
    updated_at: Any
    version: int
    created: _Created | None = None
    """The Created event, for a row created by this page."""


_COLUMNS = (
    "id, kind, phase, agent_id, workflow_id, workflow_instance_id, org, labels, "
    "created_at, updated_at, completed_at, has_callback, version"
)
_ROW_TYPES = (
    ("id", "text"),
    ("kind", "text"),
    ("phase", "text"),
    ("agent_id", "text"),
    ("workflow_id", "text"),
    ("workflow_instance_id", "text"),
    ("org", "text"),
    ("labels", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("completed_at", "timestamptz"),
    ("has_callback", "boolean"),
    ("version", "bigint"),
)
_PHASE_NUMBERS = {p.proto_name: int(p) for p in Phase}


def _ddl(postgres: bool) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS {status} ("
        "id {id} PRIMARY KEY, "
        "kind text NOT NULL, "
        "phase text NOT NULL, "
        "agent_id text, "
        "workflow_id text, "
        "workflow_instance_id text, "
        "org text, "
        "labels text NOT NULL, "
        "created_at {ts} NOT NULL, "
        "updated_at {ts} NOT NULL, "
        "completed_at {ts}, "
        "has_callback {bool} NOT NULL, "
        "version {bigint} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS view_status_created_idx ON {status} (created_at, id)",
        "CREATE INDEX IF NOT EXISTS view_status_phase_idx ON {status} (phase, created_at, id)",
        "CREATE INDEX IF NOT EXISTS view_status_org_idx ON {status} (org, created_at, id)",
        "CREATE TABLE IF NOT EXISTS {labels} ("
        "execution_id {id} NOT NULL, "
        "key text NOT NULL, "
        "value text NOT NULL, "
        "created_at {ts} NOT NULL, "
        "PRIMARY KEY (key, value, created_at, execution_id))",
        "CREATE TABLE IF NOT EXISTS {counts} ("
        "kind text NOT NULL, "
        "phase text NOT NULL, "
        "n {bigint} NOT NULL, "
        "PRIMARY KEY (kind, phase))",
    ]


class StatusView(View[dict[str, list[_Fact]]]):
    """The execution status view: one row per execution."""

    name: ClassVar[str] = "status"
    schema: ClassVar[ViewSchema] = ViewSchema(
        tracking_table_name="view_status_tracking",
        tables={
            "status": "view_status",
            "labels": "view_status_labels",
            "counts": "view_status_counts",
        },
        ddl=_ddl,
    )

    def __init__(self, recorder: ViewRecorder, logs: Mapping[str, LogReader]) -> None:
        super().__init__(recorder, logs)
        r = recorder
        self._select_rows = r.sql(
            "SELECT id, kind, phase, completed_at, version FROM {status} WHERE id {in_ids}"
        )
        # On PostgreSQL one statement inserts the new rows and, from their labels
        # column, their label rows (no label arrays to send); SQLite inserts both.
        self._labels_with_rows = r.is_postgres
        if self._labels_with_rows:
            self._insert_rows = r.bulk(
                "WITH created AS (INSERT INTO {status} AS a",
                _ROW_TYPES,
                "ON CONFLICT (id) DO NOTHING RETURNING id, labels, created_at) "
                "INSERT INTO {labels} (execution_id, key, value, created_at) "
                "SELECT c.id, l.key, l.value, c.created_at "
                "FROM created c, json_each_text(c.labels::json) AS l "
                "ON CONFLICT (key, value, created_at, execution_id) DO NOTHING",
            )
        else:
            self._insert_rows = r.bulk(
                "INSERT INTO {status} AS a", _ROW_TYPES, "ON CONFLICT (id) DO NOTHING"
            )
        self._update_rows = r.bulk_update(
            "{status}",
            ("id", "text"),
            (
                ("phase", "text"),
                ("updated_at", "timestamptz"),
                ("completed_at", "timestamptz"),
                ("version", "bigint"),
            ),
        )
        self._insert_labels = r.bulk(
            "INSERT INTO {labels} AS a",
            (
                ("execution_id", "text"),
                ("key", "text"),
                ("value", "text"),
                ("created_at", "timestamptz"),
            ),
            "ON CONFLICT (key, value, created_at, execution_id) DO NOTHING",
        )
        self._add_counts = r.bulk(
            "INSERT INTO {counts} AS c",
            (("kind", "text"), ("phase", "text"), ("n", "bigint")),
            "ON CONFLICT (kind, phase) DO UPDATE SET n = c.n + excluded.n",
        )

    @property
    def follows(self) -> Mapping[str, Sequence[str]]:
        return {LEDGER_LOG: ()}

    # Keeping the view.

    def prepare(self, log: LogReader, page: Sequence[Notification]) -> dict[str, list[_Fact]]:
        facts: dict[str, list[_Fact]] = {}
        plain = log.plain_topics(_PHASE_TOPICS)
        for notification in page:
            fact = decode_fact(log, notification, plain)
            if fact is not None:
                facts.setdefault(str(notification.originator_id), []).append(fact)
        return facts

    def write(self, tx: Tx, log_name: str, prepared: dict[str, list[_Fact]]) -> None:
        if not prepared:
            return
        db_time = self.recorder.db_time
        ids = sorted(prepared)
        # Executions created in this page have no row yet (each event is applied
        # once: the position moves with the rows), so only the others are read.
        rows = self._existing(tx, [i for i in ids if not isinstance(prepared[i][0], _Created)])
        counts: dict[tuple[str, int], int] = {}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        labels: list[tuple[Any, ...]] = []
        for execution_id in ids:
            row = rows.get(execution_id)
            before = (row.kind, row.phase) if row is not None else None
            version = row.version if row is not None else 0
            for fact in prepared[execution_id]:
                row = _apply(row, fact, db_time)
            if row is None or row.version == version:
                continue  # Nothing new (or events of an execution never created).
            after = (row.kind, row.phase)
            if before != after:
                if before is not None:
                    counts[before] = counts.get(before, 0) - 1
                counts[after] = counts.get(after, 0) + 1
            created = row.created
            if created is None:
                updates.append(
                    (
                        execution_id,
                        PHASE_NAMES[row.phase],
                        row.updated_at,
                        row.completed_at,
                        row.version,
                    )
                )
                continue
            created_at = db_time(created.timestamp)
            inserts.append(
                (
                    execution_id,
                    row.kind,
                    PHASE_NAMES[row.phase],
                    created.agent_id,
                    created.workflow_id,
                    created.workflow_instance_id,
                    created.org,
                    _labels_json(created.labels),
                    created_at,
                    row.updated_at,
                    row.completed_at,
                    created.has_callback,
                    row.version,
                )
            )
            if created.labels and not self._labels_with_rows:
                labels += [
                    (execution_id, key, value, created_at)
                    for key, value in sorted(created.labels.items())
                ]
        self._insert_rows(tx, inserts)
        self._update_rows(tx, updates)
        self._insert_labels(tx, labels)
        deltas = [(kind, PHASE_NAMES[phase], n) for (kind, phase), n in sorted(counts.items()) if n]
        self._add_counts(tx, deltas)

    def _existing(self, tx: Tx, ids: Sequence[str]) -> dict[str, _Row]:
        if not ids:
            return {}
        tx.execute(self._select_rows, (self.recorder.id_list(ids),))
        return {
            execution_id: _Row(kind, _PHASE_NUMBERS[phase], completed_at, None, int(version))
            for execution_id, kind, phase, completed_at, version in tx.fetchall()
        }

    # Queries.

    def get(self, execution_id: str) -> ExecutionRow | None:
        """One execution's row, or None."""
        with self.recorder.read() as tx:
            tx.execute(
                self.recorder.sql(f"SELECT {_COLUMNS} FROM {{status}} WHERE id = %s"),  # noqa: S608
                (execution_id,),
            )
            values = tx.fetchone()
        return self._row(values) if values is not None else None

    def list(
        self,
        *,
        kind: str | None = None,
        phase: str | None = None,
        org: str | None = None,
        label: tuple[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[ExecutionRow], str | None]:
        """Executions newest first (by created_at, then id), filtered, one page at a time.

        ``phase`` accepts ``EXECUTION_COMPLETED``, ``COMPLETED`` or ``completed``;
        ``since`` / ``until`` bound created_at (``since <= created_at < until``;
        naive datetimes are UTC); ``label`` is a (key, value) pair. Returns the
        page and a cursor for the next one (pass it as ``after``), or None after
        the last page.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        limit = min(limit, MAX_LIMIT)
        r = self.recorder
        # Keys: the table whose (created_at, id) orders the listing.
        if label is not None:
            source = "{labels} k JOIN {status} s ON s.id = k.execution_id"
            key_id = "k.execution_id"
        else:
            source = "{status} s"
            key_id = "s.id"
        where: list[str] = []
        params: list[Any] = []
        if label is not None:
            where += ["k.key = %s", "k.value = %s"]
            params += [label[0], label[1]]
        if kind is not None:
            where.append("s.kind = %s")
            params.append(kind)
        if phase is not None:
            where.append("s.phase = %s")
            params.append(_phase_name(phase))
        if org is not None:
            where.append("s.org = %s")
            params.append(org)
        if since is not None:
            where.append("k.created_at >= %s" if label else "s.created_at >= %s")
            params.append(r.db_time(as_utc(since)))
        if until is not None:
            where.append("k.created_at < %s" if label else "s.created_at < %s")
            params.append(r.db_time(as_utc(until)))
        key_time = "k.created_at" if label is not None else "s.created_at"
        if after is not None:
            cursor_time, cursor_id = _decode_cursor(after)
            where.append(f"({key_time}, {key_id}) < (%s, %s)")
            params += [r.db_time(cursor_time), cursor_id]
        columns = ", ".join("s." + c.strip() for c in _COLUMNS.split(","))
        statement = (
            f"SELECT {columns} FROM {source}"  # noqa: S608
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {key_time} DESC, {key_id} DESC LIMIT %s"
        )
        params.append(limit + 1)
        with r.read() as tx:
            tx.execute(r.sql(statement), params)
            found = [self._row(values) for values in tx.fetchall()]
        if len(found) <= limit:
            return found, None
        page = found[:limit]
        return page, _encode_cursor(page[-1].created_at, page[-1].id)

    def counts_by_phase(self, kind: str | None = None) -> dict[str, int]:
        """Executions per phase (platform spelling), of one kind or all; no zero counts."""
        r = self.recorder
        with r.read() as tx:
            if kind is None:
                tx.execute(r.sql("SELECT phase, SUM(n) FROM {counts} GROUP BY phase"))
            else:
                tx.execute(
                    r.sql("SELECT phase, SUM(n) FROM {counts} WHERE kind = %s GROUP BY phase"),
                    (kind,),
                )
            found = {str(phase): int(n) for phase, n in tx.fetchall()}
        return {
            phase.proto_name: found[phase.proto_name]
            for phase in Phase
            if found.get(phase.proto_name)
        }

    def snapshot(self) -> builtins.list[ExecutionRow]:
        """Every row, by id (for checks and tests; not for large stores)."""
        with self.recorder.read() as tx:
            tx.execute(self.recorder.sql(f"SELECT {_COLUMNS} FROM {{status}} ORDER BY id"))  # noqa: S608
            return [self._row(values) for values in tx.fetchall()]

    def _row(self, values: Sequence[Any]) -> ExecutionRow:
        r = self.recorder
        created_at = r.py_time(values[8])
        updated_at = r.py_time(values[9])
        assert created_at is not None and updated_at is not None
        return ExecutionRow(
            id=values[0],
            kind=values[1],
            phase=values[2],
            agent_id=values[3],
            workflow_id=values[4],
            workflow_instance_id=values[5],
            org=values[6],
            labels=json.loads(values[7]),
            created_at=created_at,
            updated_at=updated_at,
            completed_at=r.py_time(values[10]),
            has_callback=bool(values[11]),
            version=int(values[12]),
        )


def _apply(row: _Row | None, fact: _Fact, db_time: Callable[[datetime], Any]) -> _Row | None:
    """The row after one event (events at or below the row's version are ignored)."""
    if isinstance(fact, _Created):
        if row is not None:
            return row  # Already created.
        at = db_time(fact.timestamp)
        return _Row(fact.kind, int(Phase.PENDING), None, at, fact.version, created=fact)
    if row is None or fact.version <= row.version:
        return row
    if fact.phase:
        row.phase = fact.phase
    at = db_time(fact.timestamp)
    if fact.completed and row.completed_at is None:
        row.completed_at = at
    row.updated_at = at
    row.version = fact.version
    return row


def _labels_json(labels: Mapping[str, str]) -> str:
    """The ``labels`` column: the labels as a JSON object, keys sorted."""
    return _labels_json_of(tuple(sorted(labels.items()))) if labels else "{}"


@lru_cache(maxsize=4096)
def _labels_json_of(items: tuple[tuple[str, str], ...]) -> str:
    # Label sets repeat across executions (env, team, ...): each is encoded once.
    return json.dumps(dict(items), sort_keys=True)


def _phase_name(value: str) -> str:
    """The platform spelling of a phase given in any accepted form; anything else as is
    (it then matches nothing)."""
    try:
        return Phase.parse(value).proto_name
    except (KeyError, ValueError):
        return value


def _encode_cursor(created_at: datetime, execution_id: str) -> str:
    data = json.dumps([created_at.isoformat(), execution_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, execution_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return as_utc(datetime.fromisoformat(created_at)), str(execution_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise ValueError(f"not a cursor returned by list(): {cursor[:40]!r}") from None
