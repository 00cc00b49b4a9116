"""How far a follower may read a PostgreSQL notification log: the readable head.

Writers do not wait for each other (no table lock), so notification ids are not
issued in commit order: a transaction may draw id 7, another draw 8 and commit
first. A follower that read ``notification_id > 6`` and got 8 would pass 7 for
good when it commits. The rule that prevents it, with positions that stay single
notification ids:

1. Every insert function makes its transaction take its transaction id
   (``pg_current_xact_id()``) *before* it draws notification ids (the sequence
   has no per-session cache, so ids are drawn in real-time order).
2. An **observation** is one statement: ``L``, the largest notification id
   committed in the statement's snapshot; then ``N``, the next transaction id to
   be assigned (``pg_snapshot_xmax`` plus ``age()`` of it: ``age`` counts from the
   transaction counter; no id is assigned to the reader); and ``H``, the oldest
   transaction id still running (``pg_snapshot_xmin``).
3. A transaction that drew an id up to ``L`` drew it before ``L`` was drawn,
   hence before the snapshot, and took its transaction id before that: its id
   is below ``N``. Once a later (or the same) observation sees ``H >= N``, all of
   them have ended: every id up to ``L`` is final (committed and visible to any
   later statement, or rolled back and never to appear). ``L`` is then readable.

The **readable head** is the largest such ``L`` known; it only grows. Followers
read up to it (:meth:`ReadHorizon.cap`), so they read in notification id order
and never pass a transaction that can still commit; their positions, the library's
tracking records and the lag in events keep their meaning. The price: a row
becomes readable once every transaction that was running when it was observed has
ended, so **one long transaction anywhere in the cluster** (any database, any
role, even one that writes nothing to the ledger but holds a transaction id)
holds every follower back until it ends. :func:`horizon_holder` names it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresDatastore

__all__ = [
    "HorizonHolder",
    "HorizonReport",
    "Observation",
    "ReadHorizon",
    "committed_head",
    "horizon_holder",
    "horizon_report",
]

logger = logging.getLogger(__name__)

WARN_AFTER = 10.0
"""Seconds between warnings while a wait without limit goes on (see :meth:`ReadHorizon.head`)."""

MAX_PENDING = 64
"""Observations kept until they become readable (more are merged into the last)."""

FIRST_WAIT = 0.0005
MAX_WAIT_STEP = 0.02
"""Seconds between observations while waiting for one to become readable: from
:data:`FIRST_WAIT`, doubling, at most :data:`MAX_WAIT_STEP`."""


@dataclass(frozen=True)
class Observation:
    """One look at the log and at the running transactions (see the module doc)."""

    committed: int
    """``L``: the largest committed notification id (0: none)."""
    next_xid: int
    """``N``: the next transaction id to be assigned."""
    oldest_running: int
    """``H``: the oldest transaction id still running (``N`` or less)."""


class ReadHorizon:
    """The readable head of one events table, kept up to date by observations.

    Thread-safe; one per recorder, shared by every follower of the process.
    """

    def __init__(self, datastore: PostgresDatastore, schema: str, table: str) -> None:
        self.datastore = datastore
        self._statement = (
            SQL(
                "SELECT (SELECT max(notification_id) FROM {table}), "
                "pg_snapshot_xmax(s)::text::bigint + age(xid(pg_snapshot_xmax(s))), "
                "pg_snapshot_xmin(s)::text::bigint "
                "FROM pg_current_snapshot() AS s"
            )
            .format(table=Identifier(schema, table))
            .as_bytes(None)
        )
        self._lock = threading.Lock()
        self._readable: int | None = None
        self._pending: deque[tuple[int, int]] = deque()  # (N, L), both increasing

    @property
    def readable(self) -> int | None:
        """The readable head known now (None before any observation became readable)."""
        return self._readable

    def observe(self) -> Observation:
        """Observes (one statement, autocommit) and moves the readable head."""
        with self.datastore.get_connection() as conn:
            assert conn.autocommit  # age() must count from this statement's own start.
            row = (
                conn.cursor(row_factory=tuple_row).execute(self._statement, prepare=True).fetchone()
            )
        assert row is not None
        observation = Observation(
            committed=int(row[0] or 0), next_xid=int(row[1]), oldest_running=int(row[2])
        )
        self._take(observation)
        return observation

    def _take(self, o: Observation) -> None:
        with self._lock:
            readable = self._readable
            while self._pending and self._pending[0][0] <= o.oldest_running:
                readable = max(readable or 0, self._pending.popleft()[1])
            if o.oldest_running >= o.next_xid:
                readable = max(readable or 0, o.committed)
                self._pending.clear()
            elif o.committed > max(readable or 0, self._pending[-1][1] if self._pending else 0):
                if len(self._pending) >= MAX_PENDING:
                    self._pending.pop()
                self._pending.append((o.next_xid, o.committed))
            elif readable is None and not self._pending:
                # Nothing committed beyond what is known: still needs its turn.
                self._pending.append((o.next_xid, o.committed))
            self._readable = readable

    def head(self, wait: float | None) -> int | None:
        """Observes, then waits (observing again) until what was committed at the
        first observation is readable, or ``wait`` seconds (None: no limit) pass;
        returns the readable head then (None if nothing is readable yet)."""
        target = self.observe().committed
        started = time.monotonic()
        deadline = None if wait is None else started + wait
        step = FIRST_WAIT
        next_warning = started + WARN_AFTER
        while (self._readable is None or self._readable < target) and (
            deadline is None or time.monotonic() < deadline
        ):
            time.sleep(
                step if deadline is None else min(step, max(0.0, deadline - time.monotonic()))
            )
            step = min(step * 2, MAX_WAIT_STEP)
            self.observe()
            if deadline is None and time.monotonic() >= next_warning:
                next_warning += WARN_AFTER
                self._warn_waiting(time.monotonic() - started)
        return self._readable

    def _warn_waiting(self, waited: float) -> None:
        with self.datastore.get_connection() as conn:
            holder = horizon_holder(conn)
        logger.warning(
            "waited %.0f s for a readable head: the oldest transaction running is %s",
            waited,
            "gone" if holder is None else f"pid {holder.pid} ({holder.state}) since {holder.since}",
        )

    def report(self, wait: float = 0.5) -> HorizonReport:
        """The readable and committed heads (after waiting up to ``wait`` seconds
        for what is committed now), and, when they differ, the oldest transaction
        running in the cluster: what holds this log's followers back."""
        committed = self.observe().committed
        readable = self.head(wait) or 0
        holder = None
        if readable < committed:
            with self.datastore.get_connection() as conn:
                holder = horizon_holder(conn)
        return HorizonReport(readable=readable, committed=committed, holder=holder)

    def cap(self, first: int, limit: int, wait: float) -> int | None:
        """The highest id a read of up to ``limit`` rows from id ``first`` may return:
        the readable head known, without a statement when it is far enough ahead,
        else after :meth:`head` (``wait``); None when nothing is readable."""
        known = self._readable
        if known is not None and known >= first + limit - 1:
            return known
        return self.head(wait)


@dataclass(frozen=True)
class HorizonHolder:
    """The oldest transaction still running in the cluster (what holds followers back)."""

    pid: int | None
    """Its backend's process id (None for a prepared transaction)."""
    database: str | None
    user: str | None
    application_name: str | None
    state: str | None
    """``active``, ``idle in transaction``, ... (or ``prepared``)."""
    since: datetime | None
    """When its transaction began (None when this role may not see it)."""
    transaction_id: int


def horizon_holder(conn: Any) -> HorizonHolder | None:
    """The oldest transaction holding a transaction id in the cluster, or None.

    Reads ``pg_stat_activity`` and ``pg_prepared_xacts``: without superuser or
    ``pg_read_all_stats``, another role's session shows only its pid, database
    and user."""
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            "SELECT pid, datname, usename::text, application_name, state, xact_start, "
            "backend_xid::text::bigint, age(backend_xid) FROM pg_stat_activity "
            "WHERE backend_xid IS NOT NULL "
            "UNION ALL SELECT NULL, database, owner::text, gid, 'prepared', prepared, "
            "transaction::text::bigint, age(transaction) FROM pg_prepared_xacts "
            "ORDER BY 8 DESC LIMIT 1"
        )
        .fetchone()
    )
    if row is None:
        return None
    return HorizonHolder(*row[:7])


@dataclass(frozen=True)
class HorizonReport:
    """What a log's followers may read now, and what holds them back (for operators)."""

    readable: int
    """The readable head (0: nothing readable yet)."""
    committed: int
    """The largest committed notification id."""
    holder: HorizonHolder | None
    """The oldest transaction running, when committed events wait behind it."""

    @property
    def held_back(self) -> int:
        """Notification ids committed but not readable yet."""
        return max(0, self.committed - self.readable)


def _horizon_of(recorder: Any) -> ReadHorizon | None:
    horizon = getattr(recorder, "horizon", None)
    return horizon if isinstance(horizon, ReadHorizon) else None


def committed_head(recorder: Any) -> int:
    """The largest committed notification id of an application recorder: beyond the
    readable head on the ledger's PostgreSQL recorders; elsewhere (SQLite, memory:
    one writer at a time) the head followers read to."""
    horizon = _horizon_of(recorder)
    if horizon is not None:
        return horizon.observe().committed
    return int(recorder.max_notification_id() or 0)


def horizon_report(recorder: Any, wait: float = 0.5) -> HorizonReport | None:
    """:meth:`ReadHorizon.report` of a recorder with a readable head, else None."""
    horizon = _horizon_of(recorder)
    return horizon.report(wait) if horizon is not None else None
