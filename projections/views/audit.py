"""The completion audit view: one row per terminal execution, and what became of its callback.

It follows two logs, each with a position of its own:

- the ledger's (``Created`` and ``Completed`` events): kind, terminal phase,
  completed_at, and whether the spec has a callback token. A ``Created`` is held
  in ``view_audit_open`` (id, kind, has_callback) until its ``Completed``
  arrives, so that table only holds executions still running;
- the dispatcher's (every ``Delivery`` event): ``Opened`` (kind, phase,
  completed_at, has_callback: the same facts as the ledger's), ``Attempted``
  (attempts), and the outcomes (``delivered``, ``stale``,
  ``stale_after_attempt``, ``rejected``, ``no_callback``, ``parked``), whose time
  is ``delivered_at``.

The two logs are read independently, so either may be ahead: a row is an
upsert in which each log writes only the fields it knows (the facts both know
are equal, so whichever arrives first stays; outcome and delivered_at come only
from the dispatcher, in its log's order; attempts only grow). The row ends the
same whatever the order of arrival.

``outcome`` is NULL (shown as ``pending``) until the dispatcher records one.
Indexes: a partial index on (completed_at, execution_id) of the rows still
pending or parked (the operator's work list), and (completed_at, outcome) for
counts over a time range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.persistence import Notification

from ledger.contract.errors import InvalidIdError
from ledger.contract.ids import kind_of_id
from ledger.contract.names import COMPLETED_TOPICS, CREATED_TOPICS, DISPATCHER_LOG, LEDGER_LOG
from ledger.domain.execution import Execution
from projections.dispatch.delivery import Delivery, Outcome
from projections.views._dialects import Tx, ViewRecorder, ViewSchema, as_utc
from projections.views._follower import View
from projections.views._logs import PHASE_NAMES, LogReader, iso_value, pb_value, timestamp_and_phase

CREATED = frozenset(CREATED_TOPICS)
"""Topics of an execution's ``Created`` event (current and round-1 names)."""
COMPLETED = frozenset(COMPLETED_TOPICS)
"""Topics of ``Completed``."""
_KNOWN_TOPICS = CREATED | COMPLETED
PENDING = Outcome.PENDING.value
"""The outcome shown while the dispatcher has recorded none."""


@dataclass(frozen=True)
class AuditRow:
    """One terminal execution's completion story."""

    execution_id: str
    kind: str
    phase: str
    """The terminal phase, platform spelling (``EXECUTION_FAILED``)."""
    completed_at: datetime | None
    has_callback: bool
    outcome: str
    """``pending`` until the dispatcher records an outcome, then one of
    :class:`~projections.delivery.Outcome`'s values."""
    attempts: int
    delivered_at: datetime | None
    """When the outcome was recorded (None while pending)."""
    latency_ms: float | None
    """delivered_at - completed_at, in milliseconds."""


@dataclass(frozen=True)
class _Started:
    execution_id: str
    kind: str
    has_callback: bool


@dataclass(frozen=True)
class _Ended:
    execution_id: str
    phase: int
    completed_at: datetime


@dataclass
class _Delivery:
    """What one page of the dispatcher's log says about one delivery."""

    kind: str | None = None
    phase: int | None = None
    completed_at: datetime | None = None
    has_callback: bool | None = None
    attempts: int = 0
    outcome: str | None = None
    delivered_at: datetime | None = None


@dataclass
class _LedgerPage:
    started: list[_Started] = field(default_factory=list)
    ended: list[_Ended] = field(default_factory=list)


_COLUMNS = "execution_id, kind, phase, completed_at, has_callback, outcome, attempts, delivered_at"


def _ddl(postgres: bool) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS {audit} ("
        "execution_id {id} PRIMARY KEY, "
        "kind text, "
        "phase text, "
        "completed_at {ts}, "
        "has_callback {bool}, "
        "outcome text, "
        "attempts {bigint} NOT NULL DEFAULT 0, "
        "delivered_at {ts})",
        "CREATE INDEX IF NOT EXISTS {ix}view_audit_pending_idx "
        "ON {audit} (completed_at, execution_id) "
        "WHERE outcome IS NULL OR outcome = 'parked'",
        "CREATE INDEX IF NOT EXISTS {ix}view_audit_completed_idx "
        "ON {audit} (completed_at, outcome)",
        "CREATE TABLE IF NOT EXISTS {open} ("
        "execution_id {id} PRIMARY KEY, "
        "kind text NOT NULL, "
        "has_callback {bool} NOT NULL)",
    ]


class AuditView(View[Any]):
    """The completion audit view: one row per terminal execution."""

    name: ClassVar[str] = "audit"
    schema: ClassVar[ViewSchema] = ViewSchema(
        tracking_table_name="view_audit_tracking",
        tables={
            "audit": "view_audit",
            "open": "view_audit_open",
            "dead": "view_audit_dead_letters",
        },
        ddl=_ddl,
        version=1,
        main="audit",
    )

    def __init__(self, recorder: ViewRecorder, logs: Mapping[str, LogReader]) -> None:
        super().__init__(recorder, logs)
        r = recorder
        self._upsert = r.sql(
            f"INSERT INTO {{audit}} AS a ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
            "ON CONFLICT (execution_id) DO UPDATE SET "
            "kind = COALESCE(a.kind, excluded.kind), "
            "phase = COALESCE(a.phase, excluded.phase), "
            "completed_at = COALESCE(a.completed_at, excluded.completed_at), "
            "has_callback = COALESCE(a.has_callback, excluded.has_callback), "
            "outcome = COALESCE(excluded.outcome, a.outcome), "
            "attempts = {greatest}(a.attempts, excluded.attempts), "
            "delivered_at = CASE WHEN excluded.outcome IS NULL "
            "THEN a.delivered_at ELSE excluded.delivered_at END"
        )
        self._insert_open = r.sql(
            "INSERT INTO {open} (execution_id, kind, has_callback) VALUES (%s, %s, %s) "
            "ON CONFLICT (execution_id) DO NOTHING"
        )
        self._select_open = r.sql(
            "SELECT execution_id, kind, has_callback FROM {open} WHERE execution_id {in_ids}"
        )
        self._delete_open = r.sql("DELETE FROM {open} WHERE execution_id {in_ids}")

    @property
    def follows(self) -> Mapping[str, Sequence[str]]:
        return {LEDGER_LOG: (*CREATED_TOPICS, *COMPLETED_TOPICS), DISPATCHER_LOG: ()}

    # Keeping the view.

    def prepare(self, log: LogReader, page: Sequence[Notification]) -> Any:
        if log.name == DISPATCHER_LOG:
            return self._prepare_deliveries(log, page)
        return self._prepare_ledger(log, page)

    def write(self, tx: Tx, log_name: str, prepared: Any) -> None:
        if isinstance(prepared, _LedgerPage):
            self._write_ledger(tx, prepared)
        else:
            self._write_deliveries(tx, prepared)

    def _prepare_ledger(self, log: LogReader, page: Sequence[Notification]) -> _LedgerPage:
        prepared = _LedgerPage()
        for notification in page:
            execution_id = str(notification.originator_id)
            if notification.topic not in _KNOWN_TOPICS:
                continue
            data = log.data(notification)
            if data is not None and notification.topic in COMPLETED:
                quick = timestamp_and_phase(data)
                if quick is not None:
                    prepared.ended.append(_Ended(execution_id, quick[1], quick[0]))
                    continue
            state = log.parse(data) if data is not None else None
            if state is not None:
                if notification.topic in CREATED:
                    spec: Any = pb_value(state["spec"])
                    prepared.started.append(
                        _Started(execution_id, state["kind"], bool(spec.callback_token))
                    )
                else:
                    prepared.ended.append(
                        _Ended(execution_id, int(state["phase"]), iso_value(state["timestamp"]))
                    )
                continue
            event = log.event(notification)
            if isinstance(event, Execution.Created):
                spec = event.spec
                prepared.started.append(
                    _Started(execution_id, event.kind, bool(spec.callback_token))
                )
            elif isinstance(event, Execution.Completed):
                prepared.ended.append(_Ended(execution_id, int(event.phase), event.timestamp))
        return prepared

    def _prepare_deliveries(
        self, log: LogReader, page: Sequence[Notification]
    ) -> dict[str, _Delivery]:
        deliveries: dict[str, _Delivery] = {}
        for notification in page:
            event = log.event(notification)
            if not isinstance(event, Delivery.Event):
                continue
            d = deliveries.setdefault(str(notification.originator_id), _Delivery())
            if isinstance(event, Delivery.Opened):
                d.kind = event.kind
                d.phase = int(event.phase)
                d.completed_at = event.completed_at
                d.has_callback = bool(event.has_callback)
            elif isinstance(event, Delivery.Attempted):
                d.attempts = max(d.attempts, int(event.attempt))
            elif isinstance(event, Delivery.Resolved):
                d.outcome = type(event).outcome.value
                d.delivered_at = event.timestamp
        return deliveries

    def _write_ledger(self, tx: Tx, page: _LedgerPage) -> None:
        r = self.recorder
        started = {s.execution_id: s for s in page.started}
        ended = sorted(page.ended, key=lambda e: e.execution_id)
        ended_ids = {e.execution_id for e in ended}
        missing = sorted(i for i in ended_ids if i not in started)
        if missing:
            tx.execute(self._select_open, (r.id_list(missing),))
            for execution_id, kind, has_callback in tx.fetchall():
                started[execution_id] = _Started(execution_id, kind, bool(has_callback))
        still_open = sorted(i for i in started if i not in ended_ids)
        if still_open:
            tx.executemany(
                self._insert_open,
                [(i, started[i].kind, started[i].has_callback) for i in still_open],
            )
        if not ended:
            return
        rows = []
        for e in ended:
            s = started.get(e.execution_id)
            kind = s.kind if s is not None else _kind_of(e.execution_id)
            rows.append(
                (
                    e.execution_id,
                    kind,
                    PHASE_NAMES.get(e.phase, str(e.phase)),
                    r.db_time(e.completed_at),
                    s.has_callback if s is not None else None,
                    None,
                    0,
                    None,
                )
            )
        tx.executemany(self._upsert, rows)
        if missing:
            tx.execute(self._delete_open, (r.id_list(missing),))

    def _write_deliveries(self, tx: Tx, deliveries: dict[str, _Delivery]) -> None:
        r = self.recorder
        rows = [
            (
                execution_id,
                d.kind,
                PHASE_NAMES.get(d.phase, str(d.phase)) if d.phase is not None else None,
                r.db_time(d.completed_at),
                d.has_callback,
                d.outcome,
                d.attempts,
                r.db_time(d.delivered_at),
            )
            for execution_id, d in sorted(deliveries.items())
        ]
        if rows:
            tx.executemany(self._upsert, rows)

    # Queries.

    def get(self, execution_id: str) -> AuditRow | None:
        """One execution's completion story, or None (not terminal, or not seen yet)."""
        r = self.recorder
        with r.read() as tx:
            tx.execute(
                r.sql(f"SELECT {_COLUMNS} FROM {{audit}} WHERE execution_id = %s"),  # noqa: S608
                (execution_id,),
            )
            values = tx.fetchone()
        return self._row(values) if values is not None else None

    def pending(self, limit: int = 100, after: AuditRow | None = None) -> list[AuditRow]:
        """Executions whose callback is pending or parked, oldest completion first.

        ``after``: the last row of the previous page (keyset pagination on
        ``(completed_at, execution_id)``).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        r = self.recorder
        keyset = ""
        params: list[Any] = []
        if after is not None and after.completed_at is not None:
            keyset = "AND (completed_at > %s OR (completed_at = %s AND execution_id > %s)) "
            when = r.db_time(as_utc(after.completed_at))
            params += [when, when, after.execution_id]
        with r.read() as tx:
            tx.execute(
                r.sql(
                    f"SELECT {_COLUMNS} FROM {{audit}} "  # noqa: S608
                    "WHERE (outcome IS NULL OR outcome = 'parked') "
                    f"{keyset}"
                    "ORDER BY completed_at, execution_id LIMIT %s"
                ),
                (*params, limit),
            )
            return [self._row(values) for values in tx.fetchall()]

    def outcome_counts(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, int]:
        """Terminal executions per outcome (``pending`` included), completed in
        ``[since, until)`` (naive datetimes are UTC); no zero counts."""
        r = self.recorder
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("completed_at >= %s")
            params.append(r.db_time(as_utc(since)))
        if until is not None:
            where.append("completed_at < %s")
            params.append(r.db_time(as_utc(until)))
        statement = (
            "SELECT outcome, COUNT(*) FROM {audit}"  # noqa: S608
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY outcome"
        )
        with r.read() as tx:
            tx.execute(r.sql(statement), params)
            counts: dict[str, int] = {}
            for outcome, n in tx.fetchall():
                key = outcome or PENDING
                counts[key] = counts.get(key, 0) + int(n)
        return counts

    def snapshot(self) -> list[AuditRow]:
        """Every row, by execution id (for checks and tests; not for large stores)."""
        r = self.recorder
        with r.read() as tx:
            tx.execute(r.sql(f"SELECT {_COLUMNS} FROM {{audit}} ORDER BY execution_id"))  # noqa: S608
            return [self._row(values) for values in tx.fetchall()]

    def _row(self, values: Sequence[Any]) -> AuditRow:
        r = self.recorder
        completed_at = r.py_time(values[3])
        delivered_at = r.py_time(values[7])
        latency = None
        if completed_at is not None and delivered_at is not None:
            latency = (delivered_at - completed_at).total_seconds() * 1000.0
        execution_id = str(values[0])
        return AuditRow(
            execution_id=execution_id,
            kind=values[1] or _kind_of(execution_id),
            phase=values[2] or "",
            completed_at=completed_at,
            has_callback=bool(values[4]),
            outcome=values[5] or PENDING,
            attempts=int(values[6]),
            delivered_at=delivered_at,
            latency_ms=latency,
        )


def _kind_of(execution_id: str) -> str:
    try:
        return kind_of_id(execution_id).name
    except InvalidIdError:
        return ""
