"""What the dispatcher's speed rests on: batched reads, and same-process wake-ups.

- :func:`~ledger.store.many.select_events_of` reads many executions' events with one
  query, each in version order, on both stores;
- on SQLite, a write in the dispatcher's own process wakes it at once
  (:mod:`ledger.store.sqlite_wakeups`): with an hour between polls, a completion written
  beside it is still resolved.
"""

from __future__ import annotations

import asyncio
import threading

from temporalio.client import Client

from ledger.application import open_ledger
from ledger.contract.phases import Phase
from ledger.store import sqlite_wakeups
from ledger.store.many import select_events_of
from ledger.store.url import parse_url
from projections.dispatch.delivery import Outcome
from projections.dispatch.dispatcher import Dispatcher
from tests.support.builders import agent_execution, agent_status


def test_the_events_of_many_executions_are_read_together_in_version_order(store_url: str) -> None:
    with open_ledger(store_url) as ledger:
        short = ledger.create(agent_execution()).id
        long = ledger.create(agent_execution()).id
        for _ in range(3):
            ledger.update_status(long, agent_status(Phase.IN_PROGRESS, ["step"]))
        ledger.complete(long, {"answer": 42})
        found = select_events_of(ledger.recorder, [long, short, "aex-nobody", long])
        assert set(found) == {short, long}
        assert [e.originator_version for e in found[short]] == [1]
        assert [e.originator_version for e in found[long]] == [1, 2, 3, 4, 5]
        one_by_one = list(ledger.recorder.select_events(long))
        assert [(e.topic, e.state) for e in found[long]] == [(e.topic, e.state) for e in one_by_one]
        assert select_events_of(ledger.recorder, []) == {}


def test_an_sqlite_write_wakes_followers_in_the_same_process(sqlite_url: str) -> None:
    woken = threading.Event()
    with open_ledger(sqlite_url) as ledger:
        db_name = parse_url(sqlite_url).env["SQLITE_DBNAME"]
        unsubscribe = sqlite_wakeups.subscribe(db_name, woken.set)
        ledger.create(agent_execution())
        assert woken.is_set()
        unsubscribe()
        woken.clear()
        ledger.create(agent_execution())
        assert not woken.is_set()


def test_the_dispatcher_on_sqlite_sees_a_completion_written_in_its_process_at_once(
    sqlite_url: str, temporal_address: str
) -> None:
    async def scenario() -> Outcome | None:
        client = await Client.connect(temporal_address)
        with open_ledger(sqlite_url) as ledger:
            dispatcher = Dispatcher(
                parse_url(sqlite_url), client, poll_interval=3600, watch_callers=False
            )
            running = asyncio.create_task(dispatcher.run())
            try:
                await asyncio.sleep(0.5)  # Caught up (nothing yet), waiting for an hour.
                execution_id = ledger.create(agent_execution()).id
                await asyncio.to_thread(ledger.complete, execution_id, {"answer": 42})
                for _ in range(600):  # Well within the hour between polls.
                    delivery = await asyncio.to_thread(dispatcher.log.delivery, execution_id)
                    if delivery is not None:
                        return delivery.outcome
                    await asyncio.sleep(0.1)
                return None
            finally:
                dispatcher.stop()
                await running
                await asyncio.to_thread(dispatcher.close)

    assert asyncio.run(scenario()) is Outcome.NO_CALLBACK
