"""The one-round-trip recorders (ledger.recorder) on a real PostgreSQL server.

The library's own contract tests (``eventsourcing.tests.persistence``) run
against :class:`~ledger.recorder.LedgerPostgresApplicationRecorder` and
:class:`~ledger.recorder.LedgerPostgresProcessRecorder`, each test in a schema
of its own that is dropped afterwards; then the properties the ledger relies
on: racing writers of one version, commit order of notification ids, the lock
timeout, and the Ledger API opened with the recorder's variables.

PostgreSQL: ``LEDGER_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); the same rule as the
``postgres_server`` fixture: fails (never skips) when PostgreSQL is unreachable.
"""

from __future__ import annotations

import threading
import time
import unittest
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Any, ClassVar, Literal

import psycopg
import pytest
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    ProcessRecorderTestCase,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ledger.api.agentexecution.v1 import enum_pb2
from ledger.application import Ledger
from ledger.contract.errors import TerminalPhaseError
from ledger.contract.kinds import AgentExecutionStatus
from ledger.store.recorder import (
    LedgerPostgresApplicationRecorder,
    LedgerPostgresProcessRecorder,
    db_function_name,
)
from ledger.store.url import StoreConfig, parse_url
from tests.support import servers
from tests.support.builders import agent_execution
from tests.support.servers import POSTGRES_URL
from tests.support.waiting import wait_for

pytestmark = pytest.mark.postgres  # Every test here runs on PostgreSQL.


RECORDER_ENV = {
    "APPLICATION_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresApplicationRecorder",
    "PROCESS_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresProcessRecorder",
    "AGGREGATE_CACHE_MAXSIZE": "1000",
    "AGGREGATE_CACHE_FASTFORWARD": "n",
}
"""What ledger.store.url adds to the PostgreSQL environment (see the recorder's docstring)."""


postgres_problem = cache(servers.postgres_problem)
"""Why PostgreSQL cannot be reached (checked once per session), or None."""


def require_postgres() -> None:
    """Fails the calling test when PostgreSQL is unreachable (never skips: see conftest)."""
    problem = postgres_problem()
    if problem is not None:
        pytest.fail(f"PostgreSQL is required and unreachable at {POSTGRES_URL}: {problem}")


def new_schema() -> str:
    name = "t_rec_" + uuid.uuid4().hex[:10]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def drop_schema(name: str) -> None:
    servers.drop_schema(POSTGRES_URL, name)


def new_datastore(
    schema: str,
    originator_id_type: Literal["uuid", "text"] = "uuid",
    *,
    pool_size: int = 1,
    lock_timeout: int = 0,
) -> PostgresDatastore:
    params = conninfo_to_dict(POSTGRES_URL)
    return PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", "5432")),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        pool_size=pool_size,
        max_overflow=0,
        schema=schema,
        originator_id_type=originator_id_type,
        lock_timeout=lock_timeout,
    )


class WithPostgresSchema(unittest.TestCase):
    """A datastore on a fresh schema for each test, dropped afterwards."""

    originator_id_type: ClassVar[Literal["uuid", "text"]] = "uuid"

    def setUp(self) -> None:
        require_postgres()
        super().setUp()
        self.schema = new_schema()
        self.datastore = new_datastore(self.schema, self.originator_id_type)

    def tearDown(self) -> None:
        self.datastore.close()
        drop_schema(self.schema)
        super().tearDown()

    def new_originator_id(self) -> uuid.UUID | str:
        if self.originator_id_type == "text":
            return "aex-" + uuid.uuid4().hex
        return uuid.uuid4()

    def resize_pool(self, size: int) -> None:
        self.datastore.pool.open()
        self.datastore.pool.resize(size, size)


# The library's contract tests.


class TestApplicationRecorderContract(
    WithPostgresSchema, ApplicationRecorderTestCase[LedgerPostgresApplicationRecorder]
):
    def create_recorder(self) -> LedgerPostgresApplicationRecorder:
        recorder = LedgerPostgresApplicationRecorder(self.datastore, events_table_name="events")
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.resize_pool(2)
        self.optional_test_insert_subscribe()

    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:
        self.resize_pool(12)
        super().test_concurrent_no_conflicts(initial_position)

    def test_concurrent_throughput(self) -> None:
        self.resize_pool(10)
        super().test_concurrent_throughput()


class TestApplicationRecorderContractWithTextIds(TestApplicationRecorderContract):
    originator_id_type = "text"


class TestProcessRecorderContract(WithPostgresSchema, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        recorder = LedgerPostgresProcessRecorder(
            self.datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        return recorder

    def test_tracking_failure_writes_no_events(self) -> None:
        recorder = self.create_recorder()
        recorder.insert_events([], tracking=Tracking("upstream", 5))
        event = StoredEvent(self.new_originator_id(), 1, "topic", b"state")
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event], tracking=Tracking("upstream", 5))
        self.assertEqual(recorder.select_events(event.originator_id), [])
        self.assertEqual(recorder.max_tracking_id("upstream"), 5)

    def test_event_conflict_writes_no_tracking(self) -> None:
        recorder = self.create_recorder()
        event = StoredEvent(self.new_originator_id(), 1, "topic", b"state")
        recorder.insert_events([event])
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event], tracking=Tracking("upstream", 1))
        self.assertIsNone(recorder.max_tracking_id("upstream"))


class TestProcessRecorderContractWithTextIds(TestProcessRecorderContract):
    originator_id_type = "text"


# What the ledger relies on.


class TestRecorderProperties(WithPostgresSchema):
    originator_id_type = "text"

    def create_recorder(self) -> LedgerPostgresApplicationRecorder:
        self.resize_pool(4)
        recorder = LedgerPostgresApplicationRecorder(self.datastore, events_table_name="events")
        recorder.create_table()
        return recorder

    @staticmethod
    def in_threads(*functions: Callable[[], Any]) -> list[BaseException | Any]:
        """Runs the functions at the same moment; returns each result or exception."""
        results: list[BaseException | Any] = [None] * len(functions)
        barrier = threading.Barrier(len(functions))

        def run(index: int) -> None:
            barrier.wait()
            try:
                results[index] = functions[index]()
            except BaseException as e:
                results[index] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(functions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return results

    @staticmethod
    @contextmanager
    def held_table_lock(schema: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection holding the events table's EXCLUSIVE lock until closed."""
        conn = psycopg.connect(POSTGRES_URL)
        conn.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(schema, "events"))
        )
        try:
            yield conn
        finally:
            conn.rollback()
            conn.close()

    def waiting_for_lock(self, count: int) -> None:
        """Waits until ``count`` backends wait for a lock on this schema's events table."""
        query = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE NOT l.granted AND n.nspname = %s AND c.relname = 'events'"
        )
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:

            def queued() -> bool:
                row = conn.execute(query, (self.schema,)).fetchone()
                return row is not None and row[0] >= count

            wait_for(
                queued,
                timeout=60,
                interval=0.01,
                message=f"{count} inserts to queue on the table lock",
            )

    def test_function_names_fit_and_differ(self) -> None:
        long_name = "e" * 63
        name = db_function_name(long_name, "insert")
        self.assertLessEqual(len(name), 63)
        self.assertNotEqual(name, db_function_name("e" * 62 + "f", "insert"))
        self.assertEqual(db_function_name("ledger_events", "insert"), "ledger_events_insert")

    def test_racing_inserts_of_one_version(self) -> None:
        """Two inserts of the same (originator_id, version): one wins, one IntegrityError."""
        recorder = self.create_recorder()
        for attempt in range(20):
            originator_id = self.new_originator_id()
            # First both surely in flight together (queued behind a held table lock),
            # then started together from a barrier.
            results = self.race(recorder, originator_id, behind_lock=attempt == 0)
            errors = [r for r in results if isinstance(r, BaseException)]
            wins = [r for r in results if not isinstance(r, BaseException)]
            self.assertEqual(len(wins), 1, results)
            self.assertEqual(len(errors), 1, results)
            self.assertIsInstance(errors[0], IntegrityError)
            stored = recorder.select_events(originator_id)
            self.assertEqual(len(stored), 1)
            self.assertIn(stored[0].state, (b"first", b"second"))

    def race(
        self,
        recorder: LedgerPostgresApplicationRecorder,
        originator_id: uuid.UUID | str,
        *,
        behind_lock: bool,
    ) -> list[BaseException | Any]:
        insert_first, insert_second = (
            partial(recorder.insert_events, [StoredEvent(originator_id, 1, "topic", state)])
            for state in (b"first", b"second")
        )
        if not behind_lock:
            return self.in_threads(insert_first, insert_second)
        results: list[BaseException | Any] = []

        def run(insert: Callable[[], Any]) -> None:
            try:
                results.append(insert())
            except BaseException as e:
                results.append(e)

        racers = [threading.Thread(target=run, args=(f,)) for f in (insert_first, insert_second)]
        with self.held_table_lock(self.schema):
            for racer in racers:
                racer.start()
            self.waiting_for_lock(2)
        for racer in racers:
            racer.join(timeout=30)
        return results

    def test_a_later_insert_does_not_wait_and_is_not_read_before_an_earlier_one(
        self,
    ) -> None:
        """No table lock: an insert commits while an earlier one is still open, but
        a reader sees neither until the earlier one has ended (it never passes it)."""
        recorder = self.create_recorder()
        recorder.insert_events([StoredEvent("aex-first", 1, "topic", b"first")])
        self.assertEqual(recorder.max_notification_id(), 1)  # Observed readable.
        with psycopg.connect(POSTGRES_URL) as open_tx:  # Not autocommit: stays open.
            row = open_tx.execute(
                sql.SQL("SELECT * FROM {}.{}(%s, %s, %s, %s, %s)").format(
                    sql.Identifier(self.schema),
                    sql.Identifier(recorder.insert_one_function_name),
                ),
                ("0s", "aex-early", 1, "topic", b"early"),
            ).fetchone()
            assert row is not None
            early_id = row[0]
            later = recorder.insert_events([StoredEvent("aex-later", 1, "topic", b"later")])
            assert later is not None
            self.assertGreater(later[0], early_id)  # Committed while the early one is open.
            self.assertEqual(recorder.committed_head(), later[0])
            read = [n.id for n in recorder.select_notifications(None, 10)]
            self.assertEqual(read, [1])  # Not the later one: the early one may still commit.
            self.assertEqual(recorder.max_notification_id(), 1)
            open_tx.commit()
        wait_for(
            lambda: (
                [n.id for n in recorder.select_notifications(None, 10)] == [1, early_id, later[0]]
            ),
            timeout=60,
            message="the early and the later insert, in order",
        )
        self.assertEqual(recorder.max_notification_id(), later[0])

    def test_a_rolled_back_insert_leaves_a_gap_that_is_passed_once_final(self) -> None:
        """An open insert that rolls back holds readers until it ends, then its id is
        a gap they pass."""
        recorder = self.create_recorder()
        with psycopg.connect(POSTGRES_URL) as open_tx:
            open_tx.execute(
                sql.SQL("SELECT * FROM {}.{}(%s, %s, %s, %s, %s)").format(
                    sql.Identifier(self.schema),
                    sql.Identifier(recorder.insert_one_function_name),
                ),
                ("0s", "aex-doomed", 1, "topic", b"doomed"),
            )
            later = recorder.insert_events([StoredEvent("aex-after", 1, "topic", b"after")])
            assert later is not None
            self.assertEqual(recorder.select_notifications(None, 10), [])
            open_tx.rollback()
        wait_for(
            lambda: [n.id for n in recorder.select_notifications(None, 10)] == later,
            timeout=60,
            message="the insert after the rolled-back one",
        )

    def test_notification_ids_follow_commit_order(self) -> None:
        """A follower polling while writers race never sees a gap filled later."""
        recorder = self.create_recorder()
        self.resize_pool(6)
        stop = threading.Event()
        writes_per_writer = 150
        seen: list[int] = []
        gaps: list[tuple[int, int]] = []

        def write() -> None:
            for i in range(writes_per_writer):
                originator_id = self.new_originator_id()
                count = 1 + i % 3  # One event (insert1) or several (insert).
                recorder.insert_events(
                    [StoredEvent(originator_id, v, "topic", b"state") for v in range(count)]
                )

        def follow() -> None:
            last = 0
            while not stop.is_set():
                for notification in recorder.select_notifications(
                    last, 100, inclusive_of_start=False
                ):
                    if notification.id != last + 1:
                        gaps.append((last, notification.id))
                    last = notification.id
                    seen.append(notification.id)

        follower = threading.Thread(target=follow)
        follower.start()
        try:
            results = self.in_threads(write, write, write, write)
            head = recorder.max_notification_id() or 0
            wait_for(
                lambda: not head or (bool(seen) and seen[-1] >= head),
                timeout=60,
                message=lambda: f"the follower to reach {head} (at {seen[-1:]})",
            )
        finally:
            stop.set()
            follower.join(timeout=30)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        # No rollbacks happened, so the sequence has no holes: every id was seen, in order.
        self.assertEqual(gaps, [])
        max_id = recorder.max_notification_id()
        assert max_id is not None
        self.assertEqual(seen, list(range(1, max_id + 1)))

    def test_an_insert_survives_its_prepared_statement_being_deallocated(self) -> None:
        """The one-event insert is prepared once per connection: a ``DEALLOCATE ALL``
        on the connections (a pooler, an operator) makes it prepare again, not fail;
        its conflicts and errors are still the library's."""
        recorder = self.create_recorder()
        self.resize_pool(1)  # One connection: the one the statement was prepared on.
        self.assertEqual(recorder.insert_events([StoredEvent("aex-d", 1, "t", b"s")]), [1])
        with self.datastore.get_connection() as conn:
            conn.execute("DEALLOCATE ALL")
            prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
            self.assertEqual(prepared, {"count": 0})
        self.assertEqual(recorder.insert_events([StoredEvent("aex-d", 2, "t", b"s")]), [2])
        with self.assertRaises(IntegrityError):
            recorder.insert_events([StoredEvent("aex-d", 2, "t", b"other")])
        with self.assertRaises(DataError):  # PostgreSQL text holds no NUL character.
            recorder.insert_events([StoredEvent("aex-\x00", 1, "t", b"s")])
        stored = recorder.select_notifications(1, 10)
        self.assertEqual(
            [(n.originator_id, n.originator_version) for n in stored], [("aex-d", 1), ("aex-d", 2)]
        )

    def test_lock_timeout(self) -> None:
        """POSTGRES_LOCK_TIMEOUT bounds the wait for the table lock."""
        self.datastore.lock_timeout = 1
        recorder = self.create_recorder()
        with self.held_table_lock(self.schema):
            started = time.monotonic()
            with self.assertRaises(OperationalError) as raised:
                # _call: one attempt (insert_events retries operational errors).
                recorder._call(
                    recorder.sql_call_insert_one_function,
                    ("1s", "aex-timeout", 1, "topic", b"state"),
                )
            self.assertIn("lock timeout", str(raised.exception))
            self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(recorder.insert_events([StoredEvent("aex-x", 1, "t", b"s")]), [1])

    @staticmethod
    def lose_acknowledgement(
        recorder: LedgerPostgresApplicationRecorder,
        before_commit: Callable[[], Any] | None = None,
        *,
        commit: bool = True,
    ) -> list[int]:
        """Makes the recorder's next call go the way of a lost connection: the call
        commits (or, ``commit=False``, never reaches the server), then raises
        ``OperationalError`` as a connection lost before the acknowledgement does.
        ``before_commit`` runs first (another writer getting in). Returns how many
        calls reached ``_call`` in all."""
        real_call = recorder._call
        calls: list[int] = []

        def call(statement: bytes, params: tuple[Any, ...]) -> list[int]:
            calls.append(len(calls))
            if len(calls) == 1:
                if before_commit is not None:
                    before_commit()
                if commit:
                    real_call(statement, params)
                raise OperationalError("server closed the connection unexpectedly")
            return real_call(statement, params)

        recorder._call = call  # type: ignore[method-assign]
        return calls

    def test_a_lost_acknowledgement_is_recognised(self) -> None:
        """Committed, then the connection lost: the retry finds its own rows and
        returns their notification ids instead of a conflict."""
        recorder = self.create_recorder()
        recorder.insert_events([StoredEvent("aex-before", 1, "t", b"before")])
        for events in (
            [StoredEvent("aex-one", 1, "t", b"one")],
            [StoredEvent("aex-many", v, "t", b"many-%d" % v) for v in (1, 2, 3)],
        ):
            with self.subTest(count=len(events)):
                last = recorder.max_notification_id() or 0
                calls = self.lose_acknowledgement(recorder)
                ids = recorder.insert_events(events)
                self.assertEqual(len(calls), 2)  # Retried, and the retry conflicted.
                stored = recorder.select_notifications(last, 10, inclusive_of_start=False)
                self.assertEqual(ids, [n.id for n in stored])
                self.assertEqual([n.state for n in stored], [e.state for e in events])

    def test_a_lost_connection_then_another_writers_row_is_a_conflict(self) -> None:
        """The first try never committed and another writer took the version meanwhile:
        the retry's conflict is a race lost, even though a try's fate was unknown."""
        recorder = self.create_recorder()
        other = self.create_recorder()
        for same_bytes_but_topic in (False, True):
            originator_id = self.new_originator_id()
            theirs = StoredEvent(
                originator_id, 1, "other" if same_bytes_but_topic else "t", b"theirs"
            )
            mine = StoredEvent(originator_id, 1, "t", b"theirs" if same_bytes_but_topic else b"x")
            calls = self.lose_acknowledgement(
                recorder, partial(other.insert_events, [theirs]), commit=False
            )
            with self.assertRaises(IntegrityError):
                recorder.insert_events([mine])
            self.assertEqual(len(calls), 2)
            self.assertEqual(recorder.select_events(originator_id), [theirs])

    def test_a_conflict_on_a_first_try_is_never_looked_up(self) -> None:
        """Without a try of unknown fate, a conflict is a conflict, even with equal rows."""
        recorder = self.create_recorder()
        event = StoredEvent("aex-equal", 1, "t", b"same")
        recorder.insert_events([event])
        looked_up: list[object] = []

        def recorded_ids(*args: object) -> None:
            looked_up.append(args)

        recorder._recorded_ids = recorded_ids
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event])
        self.assertEqual(looked_up, [])

    def test_a_lost_acknowledgement_of_a_tracked_insert_is_recognised(self) -> None:
        """The process recorder: events with their tracking record, and a tracking
        record alone; another process's further position is still a conflict."""
        self.resize_pool(4)
        recorder = LedgerPostgresProcessRecorder(
            self.datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        calls = self.lose_acknowledgement(recorder)
        ids = recorder.insert_events(
            [StoredEvent("aex-tracked", 1, "t", b"s")], tracking=Tracking("Ledger", 5)
        )
        self.assertEqual((ids, len(calls)), ([1], 2))
        self.assertEqual(recorder.max_tracking_id("Ledger"), 5)

        calls = self.lose_acknowledgement(recorder)
        self.assertEqual(recorder.insert_events([], tracking=Tracking("Ledger", 9)), [])
        self.assertEqual((len(calls), recorder.max_tracking_id("Ledger")), (2, 9))

        other = LedgerPostgresProcessRecorder(
            self.datastore, events_table_name="events", tracking_table_name="tracking"
        )
        self.lose_acknowledgement(
            recorder,
            lambda: other.insert_events([], tracking=Tracking("Ledger", 12)),
            commit=False,
        )
        with self.assertRaises(IntegrityError):
            recorder.insert_events([], tracking=Tracking("Ledger", 11))
        self.assertEqual(recorder.max_tracking_id("Ledger"), 12)

    def test_create_table_twice_and_concurrently(self) -> None:
        recorders = [
            LedgerPostgresProcessRecorder(
                new_datastore(self.schema, "text"),
                events_table_name="events",
                tracking_table_name="tracking",
            )
            for _ in range(4)
        ]
        try:
            results = self.in_threads(*(r.create_table for r in recorders))
            self.assertFalse([r for r in results if isinstance(r, BaseException)], results)
            recorders[0].create_table()
            self.assertEqual(recorders[1].insert_events([StoredEvent("aex-a", 1, "t", b"s")]), [1])
        finally:
            for recorder in recorders:
                recorder.datastore.close()


# The Ledger API with the recorder's variables.


resource = partial(
    agent_execution,
    agent_id="agt-1",
    session_id="ses-1",
    message="hello",
    token=b"\x01" * 300,
    envelope=True,
)


class TestLedgerWithRecorder(unittest.TestCase):
    def setUp(self) -> None:
        require_postgres()
        self.schema = new_schema()
        config = parse_url(f"{POSTGRES_URL}?schema={self.schema}")
        self.config = StoreConfig(
            url=config.url, scheme=config.scheme, env={**config.env, **RECORDER_ENV}
        )
        self.ledgers: list[Ledger] = []

    def tearDown(self) -> None:
        for ledger in self.ledgers:
            ledger.close()
        drop_schema(self.schema)

    def open(self) -> Ledger:
        ledger = Ledger(self.config.env)
        self.ledgers.append(ledger)
        return ledger

    def test_lifecycle_uses_the_recorder(self) -> None:
        ledger = self.open()
        self.assertIsInstance(ledger.recorder, LedgerPostgresApplicationRecorder)
        record = ledger.create(resource())
        ledger.update_status(record.id, AgentExecutionStatus(phase=enum_pb2.EXECUTION_IN_PROGRESS))
        done = ledger.complete(record.id, {"ok": True})
        self.assertEqual(done.version, 3)
        self.assertEqual([n.id for n in ledger.notification_log.select(1, 10)], [1, 2, 3])
        with self.assertRaises(TerminalPhaseError):
            ledger.complete(record.id)
        self.assertEqual(ledger.read(record.id).version, 3)

    def test_stale_cache_in_another_process_rereads(self) -> None:
        """Two ledgers (as two processes): the one with a stale cache must still win."""
        first, second = self.open(), self.open()
        record = first.create(resource())  # first's cache: version 1
        second.update_status(
            record.id, AgentExecutionStatus(phase=enum_pb2.EXECUTION_IN_PROGRESS)
        )  # now version 2
        self.assertEqual(first.read(record.id).version, 2)
        patch = AgentExecutionStatus(phase=enum_pb2.EXECUTION_IN_PROGRESS)
        patch.tool_calls.add(id="call-1", name="search")  # A change (a no-op appends nothing).
        updated = first.update_status(record.id, patch)
        self.assertEqual(updated.version, 3)
