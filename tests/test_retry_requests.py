"""Retry requests (:mod:`projections.dispatch.retry_requests`): recorded by the console,
answered by the active dispatcher while it runs.

On SQLite and PostgreSQL: a read creates nothing; a request stays open until marked
done. Then a real dispatcher, following the ledger, with a delivery parked while
Temporal was away (a TCP proxy closed in front of the session's dev server): once
Temporal is back, a request makes the running dispatcher retry it within a lock check,
and the request is marked done with the count. Meanwhile the active dispatcher is
seen from outside (:func:`~projections.dispatch.leadership.active_holder`), and not
once it stopped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ledger.application import open_ledger
from ledger.store.url import parse_url
from projections.dispatch.delivery import Outcome
from projections.dispatch.dispatcher import Dispatcher
from projections.dispatch.leadership import active_holder
from projections.dispatch.retry_requests import RetryRequests
from tests.support.builders import agent_execution
from tests.test_dispatcher_e2e import FAST_RETRY, TcpProxy, proxied_client

TOKEN = b"\x0a\x24" + b"not-a-real-task-token" * 2


def test_requests_open_then_done(store_url: str, tmp_path: Path) -> None:
    config = parse_url(store_url)
    requests = RetryRequests(config)
    assert requests.latest() is None and requests.open_ids() == []
    if config.is_sqlite:  # A read made no file.
        assert not Path(config.component_env("dispatcher")["SQLITE_DBNAME"]).exists()
    first = requests.request("operator")
    second = RetryRequests(config).request("console")
    assert requests.open_ids() == [first, second]
    latest = requests.latest()
    assert latest is not None and latest.id == second and latest.requested_by == "console"
    assert latest.done_at is None and latest.retried is None
    requests.done([first, second], 3)
    assert requests.open_ids() == []
    done = requests.latest()
    assert done is not None and done.retried == 3
    assert done.done_at is not None and done.done_at >= done.requested_at


def test_a_running_dispatcher_answers_a_request(store_url: str, temporal_address: str) -> None:
    config = parse_url(store_url)
    ledger = open_ledger(store_url)

    async def scenario() -> None:
        proxy = TcpProxy(temporal_address)
        await proxy.start()
        client = await proxied_client(proxy)
        await proxy.stop()
        execution = ledger.create(agent_execution(token=TOKEN)).id
        ledger.complete(execution)
        dispatcher = Dispatcher(
            config, client, retry=FAST_RETRY, lock_check_interval=0.2, watch_callers=False
        )
        assert await asyncio.to_thread(active_holder, config, "dispatcher") is None
        run = asyncio.create_task(dispatcher.run())
        try:

            async def outcome() -> Outcome | None:
                delivery = await asyncio.to_thread(dispatcher.log.delivery, execution)
                return delivery.outcome if delivery is not None else None

            async def until(check: object, what: str) -> None:
                async with asyncio.timeout(120):
                    while not await check():  # type: ignore[operator]
                        assert not run.done(), f"the run ended before {what}"
                        await asyncio.sleep(0.1)

            async def parked() -> bool:
                return await outcome() is Outcome.PARKED

            await until(parked, "parking the delivery")
            # The active dispatcher is seen from outside (the console's overview).
            holder = await asyncio.to_thread(active_holder, config, "dispatcher")
            assert holder is not None
            await proxy.start()  # Temporal is back; nothing retries until asked.
            await asyncio.sleep(1.0)
            assert await outcome() is Outcome.PARKED
            requests = RetryRequests(config)
            asked = requests.request("operator")

            async def answered() -> bool:
                return await asyncio.to_thread(requests.open_ids) == []

            await until(answered, "answering the request")
            assert await outcome() in (Outcome.REJECTED, Outcome.STALE)
            latest = requests.latest()
            assert latest is not None and latest.id == asked and latest.retried == 1
        finally:
            dispatcher.stop()
            await run
            await asyncio.to_thread(dispatcher.close)
            await proxy.stop()
        assert await asyncio.to_thread(active_holder, config, "dispatcher") is None

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()


pytestmark = [pytest.mark.temporal]
