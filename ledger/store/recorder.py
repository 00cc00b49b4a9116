"""PostgreSQL recorders that write a command's events in one round trip.

The library's :class:`~eventsourcing.postgres.PostgresApplicationRecorder` runs
every insert as a client-side pipeline: ``BEGIN``, ``SET LOCAL lock_timeout``,
``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, ``INSERT``, a sync, ``COMMIT``.
The recorders here send one statement instead, in autocommit, as a prepared
statement: ``SELECT * FROM <schema>.<function>(...)``, where the function is a
plpgsql function created by :meth:`create_table` (``CREATE OR REPLACE``, in the
recorder's schema) that does the same work on the server.

Contract (the library's recorder's, except that one transaction's ids may
interleave with another's; the contract tests in ``tests/test_recorder.py`` and the
ordering probe in ``tests/test_ordering.py`` check it on a real server):

- **Atomic.** All the events of one ``insert_events`` call (and, for the process
  recorder, its tracking record) are written in one transaction, or none are.
- **Ordering for followers.** No table lock: writers never wait for each other.
  The function takes its transaction's id before drawing notification ids, and
  followers read only up to the **readable head** (:mod:`ledger.store.horizon`):
  ``max_notification_id`` returns it and ``select_notifications`` returns no row
  above it, so a follower reading ``notification_id > n`` never passes an id whose
  transaction can still commit, while its position stays one notification id.
- **Wake-ups.** After an insert commits, the recorder pokes its
  :class:`~ledger.store.wakeups.Wakeups`, which sends ``pg_notify`` on the library's
  channel from a thread, at most every few milliseconds (a ``NOTIFY`` inside the
  insert would serialise every writer's commit again). Never for a rolled-back insert.
- **Notification ids** are returned in the order of the given events.
- **Optimistic concurrency.** A second event at an existing
  ``(originator_id, originator_version)`` violates the primary key; the whole
  transaction rolls back and the caller gets the library's
  :class:`~eventsourcing.persistence.IntegrityError` (a
  :class:`~eventsourcing.persistence.RecordConflictError`), exactly as before.
- **Tracking** (process recorder). With ``tracking=``, the tracking row is
  written in the same transaction with the library's single-row semantics
  (upsert that only moves forward); a tracking position that is not greater
  than the recorded one raises ``IntegrityError`` and nothing is written.
  Legacy multi-row tracking (``SINGLE_ROW_TRACKING=no``) falls back to the
  library's pipeline.
- **Reads.** ``select_notifications`` returns the library's rows (a statement
  rendered once per shape, binary tuple rows), up to the readable head. When the
  rows asked for may lie beyond the head known, it observes first and waits up to
  :data:`READ_WAIT` for what was committed then to become readable (normally a few
  milliseconds: until the transactions running then end), so a process reads its
  own writes; ``max_notification_id`` waits likewise, and without limit while
  nothing at all is readable yet (a follower starting at the head needs a head no
  id below can join later). :meth:`~LedgerPostgresApplicationRecorder.committed_head`
  is the largest committed id, readable or not (for the lag shown to operators).
- **Retries.** Like the library, a lost connection or lock timeout is retried up to
  10 times; the statement is one transaction, never half-applied.
- **A lost acknowledgement is recognised.** When the connection is lost after
  the server committed but before the client heard so, the retry conflicts with
  the call's own rows. Unlike the library, which then reports a conflict, a
  conflict that follows an attempt of unknown fate is checked against the store:
  when the rows at the events' ``(originator_id, originator_version)`` hold
  exactly the bytes this call sent (topic and state; with a cipher the state
  carries a random nonce, so no other writer's row can match), the call
  succeeded and their notification ids are returned. Any other conflict, and
  every conflict on a first attempt, is the writer's race lost: ``IntegrityError``.
  Only without a cipher could another writer's row match, and only if it is the
  very same event down to its microsecond timestamp, which leaves the same log.

The price of the ordering guarantee: one long transaction anywhere in the cluster
holds every follower back until it ends (see :mod:`ledger.store.horizon`). Writers
that bypass these functions (the library's own recorder, legacy multi-row tracking)
take the library's ``LOCK TABLE`` and draw ids before taking a transaction id; the
lock keeps every other insert out until they commit, so the rule still holds.
``POSTGRES_ENABLE_DB_FUNCTIONS`` is ignored (these recorders always use their own
functions). Selected by ``APPLICATION_RECORDER_TOPIC`` / ``PROCESS_RECORDER_TOPIC``
(:mod:`ledger.store.url`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresProcessRecorder,
)
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier, Literal

from ledger.store._insert_functions import (
    call_function,
    create_function,
    db_function_name,
    insert_many,
    insert_one,
    track_then_insert,
)
from ledger.store._prepared import PreparedInsertOne, on_connection
from ledger.store.horizon import ReadHorizon
from ledger.store.wakeups import Wakeups

__all__ = [
    "LedgerPostgresApplicationRecorder",
    "LedgerPostgresProcessRecorder",
    "db_function_name",
]

_CREATE_TABLE_ATTEMPTS = 5

INSERT_ATTEMPTS = 10
"""Tries of an insert on a lost connection or a lock timeout (the library's figure)."""
INSERT_RETRY_WAIT = 0.2
"""Seconds between those tries, give or take 5% (the library's figure)."""
_ARRAYS = "%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]"
"""The events' columns as arrays, sent in binary: psycopg's text form of an array
quotes and escapes each element in Python (a page of the dispatcher's 512 events
took 15 µs of CPU a delivery to send that way, 3 µs in binary)."""
READ_WAIT = 1.0
"""Seconds a read waits, at most, for what was committed when it began to become
readable (see :mod:`ledger.store.horizon`); it then returns what is readable."""


class LedgerPostgresApplicationRecorder(PostgresApplicationRecorder):
    """An application recorder whose ``insert_events`` is one server-side call.

    See the module's docstring for the contract. Besides the library's table,
    index and composite type, ``create_table`` creates (``CREATE OR REPLACE``, in
    the recorder's schema, serialized between processes by an advisory lock):

    - ``<events table>_insert1(lock_timeout, originator_id, version, topic,
      state) RETURNS bigint``: one event, the common case (one command, one
      event), with scalar parameters;
    - ``<events table>_insert(lock_timeout, originator_ids[], versions[],
      topics[], states[]) RETURNS SETOF bigint``: any number of events.

    Both take the transaction's id, notify the channel and insert, as described
    above. Reads stop at the readable head (:attr:`horizon`).
    """

    notify_in_insert = False
    """``NOTIFY`` inside every insert (as round 1 did) instead of :class:`Wakeups`;
    kept for ``bench/lifecycles.py`` to measure what it costs."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        # kwargs: tracking_table_name, when a process recorder is constructed.
        super().__init__(datastore, events_table_name=events_table_name, **kwargs)
        id_type = Identifier(self.datastore.originator_id_type)
        self.insert_function_name = db_function_name(self.events_table_name, "insert")
        self.insert_one_function_name = db_function_name(self.events_table_name, "insert1")
        # The library's own db function (es_insert_events_*) is not used here:
        # create ours in its place.
        self.sql_create_statements[self.create_insert_function_statement_index] = (
            self._create_function(
                self.insert_function_name,
                SQL(
                    "p_originator_ids {id_type}[], p_originator_versions bigint[], "
                    "p_topics text[], p_states bytea[]"
                ).format(id_type=id_type),
                SQL("SETOF bigint"),
                self._insert_many(),
            )
        )
        self.sql_create_statements.append(
            self._create_function(
                self.insert_one_function_name,
                SQL(
                    "p_originator_id {id_type}, p_originator_version bigint, "
                    "p_topic text, p_state bytea"
                ).format(id_type=id_type),
                SQL("bigint"),
                insert_one(
                    self.datastore.schema,
                    self.events_table_name,
                    self.channel_name if self.notify_in_insert else None,
                ),
                declare=SQL("v_notification_id bigint;"),
            )
        )
        self.sql_call_insert_function = self._call_function(
            self.insert_function_name,
            SQL(_ARRAYS).format(id_type=id_type),
            many=True,
        )
        self._select_notifications_statements: dict[tuple[bool, bool, bool, bool], bytes] = {}
        self._sql_select_own_rows = (
            SQL(
                "SELECT e.originator_id, e.originator_version, e.notification_id, e.topic, "
                "e.state FROM {schema}.{table} e "
                "JOIN unnest(%s::{id_type}[], %s::bigint[]) AS k(originator_id, version) "
                "ON e.originator_id = k.originator_id AND e.originator_version = k.version"
            )
            .format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
                id_type=id_type,
            )
            .as_bytes(None)
        )
        self.sql_call_insert_one_function = self._call_function(
            self.insert_one_function_name,
            SQL("%s::{id_type}, %s::bigint, %s::text, %s::bytea").format(id_type=id_type),
            many=False,
        )
        self._insert_one: PreparedInsertOne | None = None
        if self.datastore.originator_id_type == "text":  # Text ids: libpq's call (:meth:`_call`).
            self._insert_one = PreparedInsertOne(
                self.datastore,
                SQL("SELECT {schema}.{function}($1::text, $2::text, $3::bigint, $4::text, {state})")
                .format(
                    schema=Identifier(self.datastore.schema),
                    function=Identifier(self.insert_one_function_name),
                    state=SQL("$5::bytea"),
                )
                .as_bytes(None),
            )
        self.horizon = ReadHorizon(self.datastore, self.datastore.schema, self.events_table_name)
        """The readable head of this log, shared by every reader of the recorder."""
        self.wakeups = Wakeups(self.datastore, self.channel_name)
        """Wake-ups of this log's followers, sent after inserts commit."""

    # SQL.

    def _create_function(
        self, name: str, parameters: Any, returns: SQL, body: Any, *, declare: SQL | None = None
    ) -> Any:
        return create_function(
            self.datastore.schema, name, parameters, returns, body, declare=declare
        )

    def _call_function(self, name: str, placeholders: Any, *, many: bool) -> bytes:
        return call_function(self.datastore.schema, name, placeholders, many=many)

    def _insert_many(self) -> Any:
        return insert_many(
            self.datastore.schema,
            self.events_table_name,
            self.channel_name if self.notify_in_insert else None,
        )

    def create_table(self) -> None:
        # Two processes creating the library's composite type at once: a unique
        # violation or "already exists" (not DuplicateObject, which it ignores); a
        # tracking table seen missing, then created. Trying again settles all.
        for attempt in range(1, _CREATE_TABLE_ATTEMPTS + 1):
            try:
                super().create_table()
            except (IntegrityError, ProgrammingError) as e:
                raced = isinstance(e, IntegrityError) or "already exists" in str(e)
                if not raced or attempt == _CREATE_TABLE_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)
            else:
                return

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        # CREATE OR REPLACE FUNCTION (and CREATE TABLE IF NOT EXISTS) can fail when
        # two processes run them at the same moment: take turns.
        curs.execute(
            SQL("SELECT pg_advisory_xact_lock(hashtext({key}))").format(
                key=Literal(f"{self.datastore.schema}.{self.events_table_name}")
            ),
            prepare=False,
        )
        super()._create_table(curs)

    # Inserting.

    def _lock_timeout_setting(self) -> str:
        return f"{int(self.datastore.lock_timeout)}s"

    @staticmethod
    def _columns(
        stored_events: Sequence[StoredEvent],
    ) -> tuple[list[Any], list[int], list[str], list[bytes]]:
        return (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        if len(stored_events) == 1:
            e = stored_events[0]
            return self._call_retrying(
                self.sql_call_insert_one_function,
                (
                    self._lock_timeout_setting(),
                    e.originator_id,
                    e.originator_version,
                    e.topic,
                    e.state,
                ),
                stored_events,
            )
        return self._call_retrying(
            self.sql_call_insert_function,
            (self._lock_timeout_setting(), *self._columns(stored_events)),
            stored_events,
        )

    def _call_retrying(
        self,
        statement: bytes,
        params: tuple[Any, ...],
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None = None,
    ) -> list[int]:
        """:meth:`_call`, retried on a lost connection or a lock timeout (as the
        library's ``retry``: up to :data:`INSERT_ATTEMPTS` tries, :data:`INSERT_RETRY_WAIT`
        seconds apart); a conflict after a try of unknown fate is checked by
        :meth:`_recorded_ids` (a lost acknowledgement is a success)."""
        fate_unknown = False
        attempt = 1
        while True:
            try:
                notification_ids: list[int] | None = self._call(statement, params)
            except IntegrityError:
                if not fate_unknown:
                    raise
                notification_ids = self._recorded_ids(stored_events, tracking)
                if notification_ids is None:
                    raise
            except (InterfaceError, OperationalError):
                if attempt >= INSERT_ATTEMPTS:
                    raise
                fate_unknown = True
                attempt += 1
                time.sleep(INSERT_RETRY_WAIT * (1 + 0.1 * (random.random() - 0.5)))  # noqa: S311
                continue
            assert notification_ids is not None
            if notification_ids and not self.notify_in_insert:
                self.wakeups.poke()
            return notification_ids

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _recorded_ids(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None
    ) -> list[int] | None:
        """The notification ids of ``stored_events`` if the store holds exactly them,
        else ``None`` (always ``None`` without events: see the process recorder).

        The events' rows are compared byte for byte (topic and state) with what was
        sent: events of another writer at the same versions differ (their own
        timestamps and content; with a cipher, their own nonces)."""
        if not stored_events:
            return None
        ids, versions, _, _ = self._columns(stored_events)
        with self.datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            cursor.execute(self._sql_select_own_rows, (ids, versions), prepare=False, binary=True)
            rows = {(row[0], row[1]): row[2:] for row in cursor.fetchall()}
        notification_ids: list[int] = []
        for e in stored_events:
            row = rows.get((e.originator_id, e.originator_version))
            if row is None:
                return None
            notification_id, topic, state = row
            if topic != e.topic or bytes(state) != e.state:
                return None
            notification_ids.append(notification_id)
        return notification_ids

    # Reading.

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """The library's ``select_notifications`` (same rows, same order) up to the
        readable head (see the module doc), with its statement rendered once per
        shape and tuple rows: the views and the dispatcher read every event through
        it, and a catch-up spent more time building these statements and dict rows
        than reading."""
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        if stop is None or stop > (self.horizon.readable or 0):
            cap = self.horizon.cap(first, limit, READ_WAIT)
            if cap is None:
                return []
            stop = cap if stop is None else min(stop, cap)
        if stop < first:
            return []
        if topics:  # As the library checks: a sequence of strings, not one string.
            assert isinstance(topics, (tuple, list)), topics
            assert all(isinstance(t, str) for t in topics), topics
        shape = (
            start is not None,
            start is not None and inclusive_of_start,
            stop is not None,
            bool(topics),
        )
        statement = self._select_notifications_statements.get(shape)
        if statement is None:
            statement = self._select_notifications_statements[shape] = (
                self._sql_select_notifications(*shape)
            )
        params: list[Any] = []
        if start is not None:
            params.append(start)
        if stop is not None:
            params.append(stop)
        if topics:
            params.append(list(topics))
        params.append(limit)
        with self.datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            # Binary results: the states arrive as they are stored (no hex round trip).
            cursor.execute(statement, params, prepare=True, binary=True)
            return notifications_from_rows(cursor.fetchall())

    def max_notification_id(self) -> int | None:
        """The readable head (None while the log is empty), after waiting up to
        :data:`READ_WAIT` for what is committed now to become readable, and without
        limit while nothing is readable yet (a head that no lower id can join later).
        """
        head = self.horizon.head(READ_WAIT)
        if head is None:
            head = self.horizon.head(None)
        return head or None

    def committed_head(self) -> int:
        """The largest committed notification id, readable or not (0: none)."""
        return self.horizon.observe().committed

    def _sql_select_notifications(
        self, has_start: bool, inclusive_of_start: bool, has_stop: bool, has_topics: bool
    ) -> bytes:
        conditions = []
        if has_start:
            conditions.append(
                "notification_id >= %s" if inclusive_of_start else "notification_id > %s"
            )
        if has_stop:
            conditions.append("notification_id <= %s")
        if has_topics:
            conditions.append("topic = ANY(%s)")
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        return (
            SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {schema}.{table}" + where + " ORDER BY notification_id LIMIT %s"
            )
            .format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
            )
            .as_bytes(None)
        )

    def _call(self, statement: bytes, params: tuple[Any, ...]) -> list[int]:
        """One autocommit round trip: the prepared call of a db function (the insert of
        one event with a text id through libpq's own call, :mod:`ledger.store._prepared`)."""
        insert_one = self._insert_one
        if (
            insert_one is not None
            and statement is self.sql_call_insert_one_function
            and type(params[1]) is str
        ):
            return [insert_one(*params)]

        def call(conn: Any) -> list[int]:
            cursor = conn.cursor(row_factory=tuple_row)
            cursor.execute(statement, params, prepare=True)
            return [row[0] for row in cursor.fetchall()]

        return on_connection(self.datastore, call)


class LedgerPostgresProcessRecorder(LedgerPostgresApplicationRecorder, PostgresProcessRecorder):
    """A process recorder: events and their tracking record in one server-side call.

    With single-row tracking (the library's default), the function
    ``<events table>_<tracking table>_tracked(lock_timeout, application_name,
    notification_id, originator_ids[], versions[], topics[], states[])`` first
    upserts the tracking row, only forward (else it raises ``unique_violation``,
    which surfaces as ``IntegrityError`` and rolls everything back), then, when
    there are events, locks, notifies and inserts exactly like
    :class:`LedgerPostgresApplicationRecorder`. Without tracking it inserts like
    the application recorder. With legacy multi-row tracking
    (``SINGLE_ROW_TRACKING=no``) it uses the library's pipeline.
    """

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        super().__init__(
            datastore,
            events_table_name=events_table_name,
            tracking_table_name=tracking_table_name,
        )
        id_type = Identifier(self.datastore.originator_id_type)
        self.insert_tracked_function_name = db_function_name(
            f"{self.events_table_name}_{self.tracking_table_name}", "tracked"
        )
        self.sql_create_statements.append(
            self._create_function(
                self.insert_tracked_function_name,
                SQL(
                    "p_application_name text, p_notification_id bigint, "
                    "p_originator_ids {id_type}[], p_originator_versions bigint[], "
                    "p_topics text[], p_states bytea[]"
                ).format(id_type=id_type),
                SQL("SETOF bigint"),
                track_then_insert(
                    self.datastore.schema, self.tracking_table_name, self._insert_many()
                ),
            )
        )
        self.sql_call_insert_tracked_function = self._call_function(
            self.insert_tracked_function_name,
            SQL("%s::text, %s::bigint, " + _ARRAYS).format(id_type=id_type),
            many=True,
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Each branch retries (once, not nested) on OperationalError/InterfaceError.
        tracking: Tracking | None = kwargs.get("tracking")
        notification_ids: Sequence[int] | None
        if tracking is None:
            notification_ids = super().insert_events(stored_events, **kwargs)
        elif not self.datastore.single_row_tracking:
            notification_ids = PostgresProcessRecorder.insert_events(self, stored_events, **kwargs)
        else:
            notification_ids = self._insert_tracked(stored_events, tracking)
        return notification_ids

    def _recorded_ids(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None
    ) -> list[int] | None:
        """As the application recorder's; a tracking record written alone is
        recognised when the recorded position is exactly the one sent (the
        events, when there are some, were written in its transaction)."""
        if stored_events or tracking is None:
            notification_ids: list[int] | None = super()._recorded_ids(stored_events, tracking)
            return notification_ids
        recorded = self.max_tracking_id(tracking.application_name)
        return [] if recorded == tracking.notification_id else None

    def _insert_tracked(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking
    ) -> Sequence[int]:
        return self._call_retrying(
            self.sql_call_insert_tracked_function,
            (
                self._lock_timeout_setting(),
                tracking.application_name,
                tracking.notification_id,
                *self._columns(stored_events),
            ),
            stored_events,
            tracking,
        )


def notifications_from_rows(rows: Iterable[tuple[Any, ...]]) -> list[Notification]:
    """Rows of ``notification_id, originator_id, originator_version, topic, state``
    (read in binary) as the library's notifications."""
    return [
        Notification(
            id=notification_id,
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=state if type(state) is bytes else bytes(state),
        )
        for notification_id, originator_id, originator_version, topic, state in rows
    ]
