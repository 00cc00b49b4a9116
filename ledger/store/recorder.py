"""PostgreSQL recorders that write a command's events in one round trip.

The library's :class:`~eventsourcing.postgres.PostgresApplicationRecorder` runs
every insert as a client-side pipeline: ``BEGIN``, ``SET LOCAL lock_timeout``,
``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, ``INSERT``, a sync, ``COMMIT``.
The recorders here send one statement instead, in autocommit, as a prepared
statement: ``SELECT * FROM <schema>.<function>(...)``, where the function is a
plpgsql function created by :meth:`create_table` (``CREATE OR REPLACE``, in the
recorder's schema) that does the same work on the server.

Contract (the same as the library's recorder; the contract tests in
``tests/test_recorder.py`` check it on a real server):

- **Atomic.** All the events of one ``insert_events`` call (and, for the process
  recorder, its tracking record) are written in one transaction, or none are.
- **Ordering for followers.** The function sets ``lock_timeout`` for its
  transaction (``POSTGRES_LOCK_TIMEOUT`` seconds, ``0`` = wait forever), then
  takes ``LOCK TABLE <events> IN EXCLUSIVE MODE`` *before* the ``INSERT`` draws
  notification ids, and the lock is held until the implicit transaction of the
  autocommit statement commits. Inserting transactions are therefore serialized:
  notification ids are issued in commit order, a transaction's ids are
  contiguous, and a follower reading ``notification_id > n`` never passes a gap
  that is filled later. ``SELECT`` is not blocked (``EXCLUSIVE`` conflicts with
  writers only).
- **Wake-ups.** The function sends ``NOTIFY <channel>`` (the library's channel);
  PostgreSQL delivers it at commit, never for a rolled-back insert.
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
- **Reads.** ``select_notifications`` returns exactly the library's rows (a statement
  rendered once per shape, binary tuple rows).
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

The price of the ordering guarantee, as with the library: the table lock is held
through the commit's WAL flush, so writers commit one after the other.
``POSTGRES_ENABLE_DB_FUNCTIONS`` is ignored (these recorders always lock). Selected
by ``APPLICATION_RECORDER_TOPIC`` / ``PROCESS_RECORDER_TOPIC`` (:mod:`ledger.store.url`).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
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
from psycopg.sql import SQL, Composed, Identifier, Literal

__all__ = [
    "LedgerPostgresApplicationRecorder",
    "LedgerPostgresProcessRecorder",
    "db_function_name",
]

_MAX_IDENTIFIER_LEN = 63
_CREATE_TABLE_ATTEMPTS = 5

INSERT_ATTEMPTS = 10
"""Tries of an insert on a lost connection or a lock timeout (the library's figure)."""
INSERT_RETRY_WAIT = 0.2
"""Seconds between those tries, give or take 5% (the library's figure)."""


def db_function_name(events_table_name: str, suffix: str) -> str:
    """The name of the server-side function for ``events_table_name``.

    ``<table>_<suffix>`` when that fits in PostgreSQL's 63 bytes, else the
    table name shortened and a hash of it, so that two tables never share one.
    """
    name = f"{events_table_name}_{suffix}"
    if len(name.encode()) <= _MAX_IDENTIFIER_LEN:
        return name
    digest = hashlib.sha256(events_table_name.encode()).hexdigest()[:12]
    keep = _MAX_IDENTIFIER_LEN - len(suffix) - len(digest) - 2
    return f"{events_table_name.encode()[:keep].decode(errors='ignore')}_{digest}_{suffix}"


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

    Both lock the table, notify the channel and insert, as described above.
    """

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
            self._sql_create_function(
                self.insert_function_name,
                SQL(
                    "p_originator_ids {id_type}[], p_originator_versions bigint[], "
                    "p_topics text[], p_states bytea[]"
                ).format(id_type=id_type),
                SQL("SETOF bigint"),
                self._sql_lock_notify_insert_many(),
            )
        )
        self.sql_create_statements.append(
            self._sql_create_function(
                self.insert_one_function_name,
                SQL(
                    "p_originator_id {id_type}, p_originator_version bigint, "
                    "p_topic text, p_state bytea"
                ).format(id_type=id_type),
                SQL("bigint"),
                self._sql_lock_notify_insert_one(),
                declare=SQL("v_notification_id bigint;"),
            )
        )
        self.sql_call_insert_function = self._sql_call_function(
            self.insert_function_name,
            SQL("%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[]").format(id_type=id_type),
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
        self.sql_call_insert_one_function = self._sql_call_function(
            self.insert_one_function_name,
            SQL("%s::{id_type}, %s::bigint, %s::text, %s::bytea").format(id_type=id_type),
            many=False,
        )

    # SQL.

    def _sql_create_function(
        self,
        name: str,
        parameters: Composed,
        returns: SQL,
        body: Composed,
        *,
        declare: SQL | None = None,
    ) -> Composed:
        """``CREATE OR REPLACE FUNCTION ... SECURITY DEFINER``: sets ``lock_timeout``
        (the first parameter), then runs ``body`` (which names tables with their schema)."""
        return SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}(p_lock_timeout text, {parameters}) "
            "RETURNS {returns} LANGUAGE plpgsql "
            # Runs with its owner's rights: a writer role needs only EXECUTE (and
            # SELECT), never INSERT, UPDATE, DELETE or TRUNCATE on the events table.
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
            "AS $BODY$ "
            "{declare}"
            "BEGIN "
            "PERFORM set_config('lock_timeout', p_lock_timeout, true); "
            "{body}"
            "END; "
            "$BODY$"
        ).format(
            schema=Identifier(self.datastore.schema),
            function=Identifier(name),
            parameters=parameters,
            returns=returns,
            declare=SQL("DECLARE {} ").format(declare) if declare is not None else SQL(""),
            body=body,
        )

    def _sql_call_function(self, name: str, placeholders: Composed, *, many: bool) -> bytes:
        """The call of a db function, rendered once (psycopg caches a bytes query's
        conversion; a ``Composed`` would be rendered again on every execute)."""
        template = (
            "SELECT * FROM {schema}.{function}(%s::text, {placeholders})"
            if many
            else "SELECT {schema}.{function}(%s::text, {placeholders})"
        )
        return (
            SQL(template)
            .format(
                schema=Identifier(self.datastore.schema),
                function=Identifier(name),
                placeholders=placeholders,
            )
            .as_bytes(None)
        )

    def _sql_lock_notify(self) -> Composed:
        """plpgsql: take the table lock (held until commit), then notify."""
        return SQL("LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; NOTIFY {channel}; ").format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            channel=Identifier(self.channel_name),
        )

    def _sql_lock_notify_insert_many(self) -> Composed:
        """plpgsql: lock, notify, insert the arrays' rows, return their ids in order."""
        return self._sql_lock_notify() + SQL(
            "RETURN QUERY "
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest("
            "p_originator_ids, p_originator_versions, p_topics, p_states) "
            "RETURNING notification_id; "
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
        )

    def _sql_lock_notify_insert_one(self) -> Composed:
        """plpgsql: lock, notify, insert one row, return its id."""
        return self._sql_lock_notify() + SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "VALUES (p_originator_id, p_originator_version, p_topic, p_state) "
            "RETURNING notification_id INTO v_notification_id; "
            "RETURN v_notification_id; "
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
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
                return self._call(statement, params)
            except IntegrityError:
                if fate_unknown:
                    notification_ids: list[int] | None = self._recorded_ids(stored_events, tracking)
                    if notification_ids is not None:
                        return notification_ids
                raise
            except (InterfaceError, OperationalError):
                if attempt >= INSERT_ATTEMPTS:
                    raise
                fate_unknown = True
                attempt += 1
                time.sleep(INSERT_RETRY_WAIT * (1 + 0.1 * (random.random() - 0.5)))  # noqa: S311

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
        """The library's ``select_notifications`` (same rows, same order), with its
        statement rendered once per shape and tuple rows: the views and the
        dispatcher read every event through it, and a catch-up spent more time
        building these statements and dict rows than reading."""
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
            return [
                Notification(
                    id=notification_id,
                    originator_id=originator_id,
                    originator_version=originator_version,
                    topic=topic,
                    state=state if type(state) is bytes else bytes(state),
                )
                for notification_id, originator_id, originator_version, topic, state in (
                    cursor.fetchall()
                )
            ]

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
        """One autocommit round trip: the prepared call of a db function."""
        with self.datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            cursor.execute(statement, params, prepare=True)
            return [row[0] for row in cursor.fetchall()]


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
            self._sql_create_function(
                self.insert_tracked_function_name,
                SQL(
                    "p_application_name text, p_notification_id bigint, "
                    "p_originator_ids {id_type}[], p_originator_versions bigint[], "
                    "p_topics text[], p_states bytea[]"
                ).format(id_type=id_type),
                SQL("SETOF bigint"),
                SQL(
                    "INSERT INTO {schema}.{tracking} AS t (application_name, notification_id) "
                    "VALUES (p_application_name, p_notification_id) "
                    "ON CONFLICT (application_name) DO UPDATE "
                    "SET notification_id = p_notification_id "
                    "WHERE t.notification_id < p_notification_id; "
                    "IF NOT FOUND THEN "
                    "RAISE EXCEPTION 'Failed to record tracking for % %', "
                    "p_application_name, p_notification_id "
                    "USING ERRCODE = 'unique_violation'; "
                    "END IF; "
                    "IF cardinality(p_originator_ids) > 0 THEN "
                    "{insert} "
                    "END IF; "
                ).format(
                    schema=Identifier(self.datastore.schema),
                    tracking=Identifier(self.tracking_table_name),
                    insert=self._sql_lock_notify_insert_many(),
                ),
            )
        )
        self.sql_call_insert_tracked_function = self._sql_call_function(
            self.insert_tracked_function_name,
            SQL(
                "%s::text, %s::bigint, %s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[]"
            ).format(id_type=id_type),
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
