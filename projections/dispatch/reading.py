"""Reading a page of completions: each execution as it was when it completed, one
query for the whole page.

:func:`read_completions` takes a page of ``Completed`` notifications and returns,
for each, the execution rebuilt up to that event (:class:`Completion`), or why it
cannot be read: an event that cannot be decrypted or decoded, a topic whose class
is gone, events missing. Such a completion is *poisoned*: its delivery is parked
with that reason (:data:`~projections.dispatch.delivery.POISONED`), never skipped
silently, and it never stops the page around it. Store errors (the store away)
are raised as they are: the caller waits them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from eventsourcing.persistence import Notification, StoredEvent

from ledger.application import Ledger
from ledger.domain.execution import Execution
from ledger.store.many import select_events_of

__all__ = ["Completion", "read_completions", "read_executions"]


@dataclass(frozen=True)
class Completion:
    """One completed execution of a page, or why it cannot be read."""

    position: int
    """The ledger position of its ``Completed`` event (0 outside the follow)."""
    execution_id: str
    execution: Execution | None
    """The execution up to its ``Completed`` event; None when it cannot be read."""
    unreadable: str = ""
    """Why it cannot be read (empty when it can)."""


def read_completions(ledger: Ledger, page: Sequence[Notification]) -> list[Completion]:
    """Each notification's execution, as of its ``Completed`` event (see the module)."""
    stored = select_events_of(ledger.recorder, [str(n.originator_id) for n in page])
    return [
        _completion(
            ledger,
            n.id,
            str(n.originator_id),
            stored.get(str(n.originator_id), []),
            n.originator_version,
        )
        for n in page
    ]


def read_executions(ledger: Ledger, execution_ids: Iterable[str]) -> list[Completion]:
    """Each execution as of its ``Completed`` event, whatever followed it (a retry of
    a parked delivery), with position 0."""
    ids = list(execution_ids)
    stored = select_events_of(ledger.recorder, ids)
    return [_completion(ledger, 0, i, stored.get(i, []), None) for i in ids]


def _completion(
    ledger: Ledger,
    position: int,
    execution_id: str,
    events: list[StoredEvent],
    version: int | None,
) -> Completion:
    try:
        execution = _rebuild(ledger, execution_id, events, version)
    except Exception as e:  # Whatever makes it unreadable: parked, never a stall.
        reason = f"{type(e).__name__}: {e}"
        return Completion(position, execution_id, None, reason[:1000])
    return Completion(position, execution_id, execution)


def _rebuild(
    ledger: Ledger, execution_id: str, events: list[StoredEvent], version: int | None
) -> Execution:
    """The execution up to ``version`` (default: up to its ``Completed`` event)."""
    if not events:
        msg = f"execution {execution_id!r} has no readable events"
        raise LookupError(msg)
    to_event = ledger.mapper.to_domain_event
    execution: Execution | None = None
    for stored in events:
        if version is not None and stored.originator_version > version:
            break
        event = cast(Execution.Event, to_event(stored))
        execution = cast(Execution, event.mutate(execution))
        if version is None and execution.outcome is not None:
            break
    if execution is None or execution.outcome is None:
        msg = f"execution {execution_id!r}: its Completed event is not among its events"
        raise LookupError(msg)
    return execution
