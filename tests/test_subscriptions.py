"""``subscribe``'s shared feeds (``ledger/cli/grpc_server/subscriptions.py``), in process.

The subscriptions of one execution share one reader of its changes; one that falls
behind the feed's window reads the store alone, and every one of them still sees
each version once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger import AgentExecution, AgentExecutionSpec, AgentExecutionStatus, Ledger
from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.cli.grpc_server import subscriptions
from ledger.cli.grpc_server.subscriptions import LogFollower, follow_execution

Seen = tuple[int, int]
"""What a subscriber saw of one resource: its message count and phase."""


async def _run(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def _page(ledger: Ledger) -> Any:
    """The log's last notification alone, as the follower would read it."""
    last = ledger.recorder.max_notification_id() or 0
    return ledger.recorder.select_notifications(start=last, limit=1)


def _step(ledger: Ledger, execution_id: str, n: int) -> None:
    patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
    patch.messages.add(content=f"step {n}")
    ledger.update_status(execution_id, patch)


def test_fast_and_slow_subscriptions_share_a_feed_and_miss_nothing(
    ledger_app: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "WINDOW", 4)  # A slow reader soon falls behind it.
    monkeypatch.setattr(subscriptions, "BATCH", 3)
    execution_id = ledger_app.create(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))
    ).id
    reads: list[int] = []
    changes = ledger_app.changes

    def counted(execution: str, *, after: int = 0) -> Any:
        reads.append(after)
        return changes(execution, after=after)

    monkeypatch.setattr(ledger_app, "changes", counted)

    async def scenario() -> tuple[list[Seen], list[Seen], list[Seen]]:
        follower = LogFollower(ledger_app, asyncio.get_running_loop())

        async def subscriber(delay: float) -> list[Seen]:
            seen: list[Seen] = []
            async for resource in follow_execution(ledger_app, follower, execution_id, 1, _run):
                status: Any = resource.status
                seen.append((len(status.messages), status.phase))
                await asyncio.sleep(delay)
            return seen

        fast = [asyncio.create_task(subscriber(0.0)) for _ in range(3)]
        slow = asyncio.create_task(subscriber(0.05))
        for n in range(1, 20):
            await asyncio.to_thread(_step, ledger_app, execution_id, n)
            page = _page(ledger_app)
            follower._notify(page, page[-1].id)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(ledger_app.complete, execution_id, {"done": True})
        page = _page(ledger_app)
        follower._notify(page, page[-1].id)
        fast_seen = await asyncio.wait_for(asyncio.gather(*fast), 60)
        return fast_seen[0], fast_seen[1], await asyncio.wait_for(slow, 60)

    first, second, slow_seen = asyncio.run(scenario())
    in_progress, completed = agent_enum.EXECUTION_IN_PROGRESS, agent_enum.EXECUTION_COMPLETED
    expected = [(n, in_progress) for n in range(1, 20)] + [(19, completed)]  # Versions 2..21.
    assert first == second == slow_seen == expected
    # Fewer readers than subscriptions: the fast ones shared one.
    assert reads.count(1) < 4, reads


def test_subscriptions_at_the_tip_read_the_store_once_per_signal(
    ledger_app: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty subscriptions of one execution that have sent everything cost no read of the
    store for a change the follower read from the log (one read when the feed starts)."""
    execution_id = ledger_app.create(
        AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))
    ).id
    reads: list[int] = []
    changes = ledger_app.changes

    def counted(execution: str, *, after: int = 0) -> Any:
        found = changes(execution, after=after)
        next_page = found.next

        def next_counted(limit: int) -> Any:
            reads.append(limit)
            return next_page(limit)

        found.next = next_counted  # type: ignore[method-assign,assignment]
        return found

    monkeypatch.setattr(ledger_app, "changes", counted)

    async def scenario() -> list[list[Seen]]:
        follower = LogFollower(ledger_app, asyncio.get_running_loop())

        async def subscriber() -> list[Seen]:
            seen: list[Seen] = []
            async for resource in follow_execution(ledger_app, follower, execution_id, 1, _run):
                status: Any = resource.status
                seen.append((len(status.messages), status.phase))
            return seen

        tasks = [asyncio.create_task(subscriber()) for _ in range(20)]
        for n in range(1, 6):
            await asyncio.to_thread(_step, ledger_app, execution_id, n)
            page = _page(ledger_app)
            follower._notify(page, page[-1].id)
            await asyncio.sleep(0.05)
        await asyncio.to_thread(ledger_app.complete, execution_id, {"done": True})
        page = _page(ledger_app)
        follower._notify(page, page[-1].id)
        return list(await asyncio.wait_for(asyncio.gather(*tasks), 60))

    seen = asyncio.run(scenario())
    in_progress, completed = agent_enum.EXECUTION_IN_PROGRESS, agent_enum.EXECUTION_COMPLETED
    expected = [(n, in_progress) for n in range(1, 6)] + [(5, completed)]
    assert all(one == expected for one in seen)
    # One read when the feed starts; the changes came with the follower's pages.
    assert len(reads) == 1, reads


def test_a_wakeup_ends_its_wait_when_set_or_after_its_timeout() -> None:
    """Waits share one timer per second of deadline; each ends once, and leaves nothing
    behind in the timers' bookkeeping."""

    async def scenario() -> tuple[bool, bool, bool, int]:
        loop = asyncio.get_running_loop()
        expiries = subscriptions._Expiries(loop)
        idle, woken, early = (subscriptions.Wakeup(loop, expiries) for _ in range(3))
        early.set()
        loop.call_later(0.05, woken.set)
        results = await asyncio.gather(idle.wait(0.01), woken.wait(600), early.wait(600))
        left = sum(len(due) for due in expiries._due.values())
        return results[0], results[1], results[2], left

    expired, set_later, set_before, left = asyncio.run(scenario())
    assert (expired, set_later, set_before) == (False, True, True)
    assert left == 0
