"""The execution status view: one row per execution, kept from the ledger's log.

Its tables, columns and schema version are in :mod:`projections.views._status_rows`;
what each event changes, in :mod:`projections.views._status_facts`.

Listing is newest first by ``(created_at, id)`` with keyset pagination; the
indexes are ``(created_at, id)``, ``(phase, created_at, id)``,
``(org, created_at, id)`` and, for labels, ``(key, value, created_at,
execution_id)``, so a page of any listing is an index range scan however many
rows there are. A kind filter (two kinds, each about half the rows) rides the
first index; deleted executions are left out unless asked for.

Every query is a fixed SQL text with parameters; filter values never become SQL.
Reading a stale view (tables of another schema version) raises
:class:`~projections.views._recorder.StaleViewError`.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.persistence import Notification

from ledger.contract.names import LEDGER_LOG
from ledger.contract.phases import Phase
from projections.views._dialects import Tx, ViewRecorder, ViewSchema, as_utc
from projections.views._follower import View
from projections.views._logs import PHASE_NAMES, LogReader
from projections.views._status_facts import (
    PHASE_TOPICS,
    Created,
    Fact,
    Row,
    apply_fact,
    decode_fact,
)
from projections.views._status_rows import (
    COLUMNS,
    LABEL_TYPES,
    PHASE_NUMBERS,
    ROW_TYPES,
    SCHEMA_VERSION,
    UPDATED_TYPES,
    ExecutionRow,
    ddl,
    decode_cursor,
    encode_cursor,
    labels_json,
    minute_of,
    phase_name,
)

__all__ = ["MAX_LIMIT", "ExecutionRow", "StatusView"]

_labels_json = labels_json  # The name tests and benchmarks know.

MAX_LIMIT = 1000
"""The largest page :meth:`StatusView.list` returns."""


class StatusView(View[dict[str, list[Fact]]]):
    """The execution status view: one row per execution."""

    name: ClassVar[str] = "status"
    schema: ClassVar[ViewSchema] = ViewSchema(
        tracking_table_name="view_status_tracking",
        tables={
            "status": "view_status",
            "labels": "view_status_labels",
            "counts": "view_status_counts",
            "minutes": "view_status_minutes",
            "dead": "view_status_dead_letters",
        },
        ddl=ddl,
        version=SCHEMA_VERSION,
        main="status",
    )

    def __init__(self, recorder: ViewRecorder, logs: Mapping[str, LogReader]) -> None:
        super().__init__(recorder, logs)
        r = recorder
        self._select_rows = r.sql(
            "SELECT id, kind, phase, completed_at, version, labels, created_at, "
            "cancel_requested_at, caller_gone_at, deleted FROM {status} WHERE id {in_ids}"
        )
        # On PostgreSQL one statement inserts the new rows and, from their labels
        # column, their label rows (no label arrays to send); SQLite inserts both.
        self._labels_with_rows = r.is_postgres
        if self._labels_with_rows:
            self._insert_rows = r.bulk(
                "WITH created AS (INSERT INTO {status} AS a",
                ROW_TYPES,
                "ON CONFLICT (id) DO NOTHING RETURNING id, labels, created_at) "
                "INSERT INTO {labels} (execution_id, key, value, created_at) "
                "SELECT c.id, l.key, l.value, c.created_at "
                "FROM created c, json_each_text(c.labels::json) AS l "
                "ON CONFLICT (key, value, created_at, execution_id) DO NOTHING",
            )
        else:
            self._insert_rows = r.bulk(
                "INSERT INTO {status} AS a", ROW_TYPES, "ON CONFLICT (id) DO NOTHING"
            )
        self._update_rows = r.bulk_update("{status}", ("id", "text"), UPDATED_TYPES)
        self._insert_labels = r.bulk(
            "INSERT INTO {labels} AS a",
            LABEL_TYPES,
            "ON CONFLICT (key, value, created_at, execution_id) DO NOTHING",
        )
        self._delete_labels = r.bulk_delete("{labels}", LABEL_TYPES)
        self._add_counts = r.bulk(
            "INSERT INTO {counts} AS c",
            (("kind", "text"), ("phase", "text"), ("n", "bigint")),
            "ON CONFLICT (kind, phase) DO UPDATE SET n = c.n + excluded.n",
        )
        self._add_minutes = r.bulk(
            "INSERT INTO {minutes} AS c",
            (("minute", "bigint"), ("events", "bigint")),
            "ON CONFLICT (minute) DO UPDATE SET events = c.events + excluded.events",
        )
        self._select_minutes = r.sql(
            "SELECT minute, events FROM {minutes} WHERE minute >= %s AND minute < %s"
        )

    @property
    def follows(self) -> Mapping[str, Sequence[str]]:
        return {LEDGER_LOG: ()}

    # Keeping the view.

    def prepare(self, log: LogReader, page: Sequence[Notification]) -> dict[str, list[Fact]]:
        facts: dict[str, list[Fact]] = {}
        plain = log.plain_topics(PHASE_TOPICS)
        for notification in page:
            fact = decode_fact(log, notification, plain)
            if fact is not None:
                facts.setdefault(str(notification.originator_id), []).append(fact)
        return facts

    def write(self, tx: Tx, log_name: str, prepared: dict[str, list[Fact]]) -> None:
        if not prepared:
            return
        db_time = self.recorder.db_time
        ids = sorted(prepared)
        # Executions created in this page have no row yet (each event is applied
        # once: the position moves with the rows), so only the others are read.
        rows = self._existing(tx, [i for i in ids if not isinstance(prepared[i][0], Created)])
        counts: dict[tuple[str, int], int] = {}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        labels: list[tuple[Any, ...]] = []
        stale_labels: list[tuple[Any, ...]] = []
        minutes: dict[int, int] = {}
        for execution_id in ids:
            row = rows.get(execution_id)
            before = (row.kind, row.phase) if row is not None and not row.deleted else None
            version = row.version if row is not None else 0
            for fact in prepared[execution_id]:
                minute = minute_of(fact.timestamp)
                minutes[minute] = minutes.get(minute, 0) + 1
                row = apply_fact(row, fact, db_time)
            if row is None or row.version == version:
                continue  # Nothing new (or events of an execution never created).
            after = (row.kind, row.phase) if not row.deleted else None
            if before != after:
                if before is not None:
                    counts[before] = counts.get(before, 0) - 1
                if after is not None:
                    counts[after] = counts.get(after, 0) + 1
            columns = (
                row.labels_text if row.labels_text is not None else labels_json(row.labels or {}),
                row.updated_at,
                row.completed_at,
                row.cancel_requested_at,
                row.caller_gone_at,
                row.deleted,
                row.version,
            )
            created = row.created
            if created is None:
                updates.append((execution_id, PHASE_NAMES[row.phase], *columns))
                if row.old_labels is not None and row.old_labels != row.labels:
                    stale_labels += _label_rows(execution_id, row.old_labels, row.created_at)
                    labels += _label_rows(execution_id, row.current_labels(), row.created_at)
                continue
            inserts.append(
                (
                    execution_id,
                    row.kind,
                    PHASE_NAMES[row.phase],
                    created.agent_id,
                    created.workflow_id,
                    created.workflow_instance_id,
                    created.org,
                    columns[0],
                    row.created_at,
                    row.updated_at,
                    row.completed_at,
                    created.has_callback,
                    row.version,
                    row.cancel_requested_at,
                    row.caller_gone_at,
                    row.deleted,
                )
            )
            if row.labels and not self._labels_with_rows:
                labels += _label_rows(execution_id, row.current_labels(), row.created_at)
        self._insert_rows(tx, inserts)
        self._update_rows(tx, updates)
        self._delete_labels(tx, stale_labels)
        self._insert_labels(tx, labels)
        deltas = [(kind, PHASE_NAMES[phase], n) for (kind, phase), n in sorted(counts.items()) if n]
        self._add_counts(tx, deltas)
        self._add_minutes(tx, sorted(minutes.items()))

    def _existing(self, tx: Tx, ids: Sequence[str]) -> dict[str, Row]:
        if not ids:
            return {}
        tx.execute(self._select_rows, (self.recorder.id_list(ids),))
        return {
            values[0]: Row(
                kind=values[1],
                phase=PHASE_NUMBERS[values[2]],
                completed_at=values[3],
                updated_at=None,
                version=int(values[4]),
                labels=None,
                labels_text=values[5],
                created_at=values[6],
                cancel_requested_at=values[7],
                caller_gone_at=values[8],
                deleted=bool(values[9]),
            )
            for values in tx.fetchall()
        }

    # Queries.

    def get(self, execution_id: str) -> ExecutionRow | None:
        """One execution's row (deleted or not), or None."""
        self.check_current()
        with self.recorder.read() as tx:
            tx.execute(
                self.recorder.sql(f"SELECT {COLUMNS} FROM {{status}} WHERE id = %s"),  # noqa: S608
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
        cancel_requested: bool = False,
        caller_gone: bool = False,
        include_deleted: bool = False,
    ) -> tuple[list[ExecutionRow], str | None]:
        """Executions newest first (by created_at, then id), filtered, one page at a time.

        ``phase`` accepts ``EXECUTION_COMPLETED``, ``COMPLETED`` or ``completed``;
        ``since`` / ``until`` bound created_at (``since <= created_at < until``;
        naive datetimes are UTC); ``label`` is a (key, value) pair (current labels);
        ``cancel_requested`` / ``caller_gone`` keep only executions with that fact
        recorded; deleted executions are left out unless ``include_deleted``. Returns
        the page and a cursor for the next one (pass it as ``after``), or None after
        the last page.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        self.check_current()
        limit = min(limit, MAX_LIMIT)
        r = self.recorder
        # Keys: the table whose (created_at, id) orders the listing.
        if label is not None:
            source = "{labels} k JOIN {status} s ON s.id = k.execution_id"
            key_id, key_time = "k.execution_id", "k.created_at"
        else:
            source = "{status} s"
            key_id, key_time = "s.id", "s.created_at"
        where: list[str] = []
        params: list[Any] = []
        if label is not None:
            where += ["k.key = %s", "k.value = %s"]
            params += [label[0], label[1]]
        for column, value in (("s.kind", kind), ("s.org", org)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if phase is not None:
            where.append("s.phase = %s")
            params.append(phase_name(phase))
        if since is not None:
            where.append(f"{key_time} >= %s")
            params.append(r.db_time(as_utc(since)))
        if until is not None:
            where.append(f"{key_time} < %s")
            params.append(r.db_time(as_utc(until)))
        if cancel_requested:
            where.append("s.cancel_requested_at IS NOT NULL")
        if caller_gone:
            where.append("s.caller_gone_at IS NOT NULL")
        if not include_deleted:
            where.append("s.deleted = %s")
            params.append(False)
        if after is not None:
            cursor_time, cursor_id = decode_cursor(after)
            where.append(f"({key_time}, {key_id}) < (%s, %s)")
            params += [r.db_time(cursor_time), cursor_id]
        columns = ", ".join("s." + c.strip() for c in COLUMNS.split(","))
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
        return page, encode_cursor(page[-1].created_at, page[-1].id)

    def counts_by_phase(self, kind: str | None = None) -> dict[str, int]:
        """Executions not deleted per phase (platform spelling), of one kind or all;
        no zero counts."""
        self.check_current()
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

    def events_per_minute(self, since: datetime, minutes: int) -> builtins.list[int]:
        """Events of the ledger per minute (by each event's own time), for ``minutes``
        minutes from the one ``since`` falls in (naive datetimes are UTC): one range of
        the ``view_status_minutes`` primary key, at most ``minutes`` rows. An event
        the view could not decode (a dead letter) is not counted."""
        if minutes < 1:
            raise ValueError(f"minutes must be at least 1 (got {minutes})")
        self.check_current()
        first = minute_of(since)
        counts = [0] * minutes
        with self.recorder.read() as tx:
            tx.execute(self._select_minutes, (first, first + minutes))
            for minute, events in tx.fetchall():
                counts[int(minute) - first] = int(events)
        return counts

    def snapshot(self) -> builtins.list[ExecutionRow]:
        """Every row, deleted ones too, by id (for checks and tests; not for large stores)."""
        self.check_current()
        with self.recorder.read() as tx:
            tx.execute(self.recorder.sql(f"SELECT {COLUMNS} FROM {{status}} ORDER BY id"))  # noqa: S608
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
            cancel_requested_at=r.py_time(values[13]),
            caller_gone_at=r.py_time(values[14]),
            deleted=bool(values[15]),
        )


def _label_rows(
    execution_id: str, labels: Mapping[str, str], created_at: Any
) -> list[tuple[Any, ...]]:
    return [(execution_id, key, value, created_at) for key, value in sorted(labels.items())]
