"""What each ledger event tells the status view (:func:`decode_fact`), and how it
changes an execution's row (:func:`apply_fact`).

Every event of an execution is a fact for its row: it moves ``version`` and
``updated_at``; ``StatusChanged`` and ``Completed`` set the phase (and
``completed_at``), ``CancelRequested`` and ``CallerGone`` set
``cancel_requested_at`` and ``caller_gone_at`` (the first one recorded),
``MetadataChanged`` replaces the labels, ``Deleted`` sets ``deleted``.

A topic that names no class any more is an error (the follower records a dead
letter for it); an event of a class the view does not know is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Notification

from ledger.contract.kinds import AgentExecutionSpec, WorkflowExecutionSpec
from ledger.contract.names import (
    CALLER_GONE_TOPICS,
    CANCEL_REQUESTED_TOPICS,
    COMPLETED_TOPICS,
    CREATED_TOPICS,
    STATUS_CHANGED_TOPICS,
    execution_topics,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from projections.views._logs import LogReader, iso_value, known_topic, pb_value, timestamp_and_phase

CREATED = frozenset(CREATED_TOPICS)
"""Topics of an execution's ``Created`` event (current and round-1 names)."""
STATUS_CHANGED = frozenset(STATUS_CHANGED_TOPICS)
COMPLETED = frozenset(COMPLETED_TOPICS)
PHASE_TOPICS = STATUS_CHANGED | COMPLETED
"""Topics whose stored JSON starts with the timestamp and the phase."""
METADATA_CHANGED = frozenset(execution_topics("MetadataChanged"))
MARKS = {
    **dict.fromkeys(CANCEL_REQUESTED_TOPICS, "cancel_requested"),
    **dict.fromkeys(CALLER_GONE_TOPICS, "caller_gone"),
    **dict.fromkeys(execution_topics("Deleted"), "deleted"),
}
"""Topics of the events that mark a row, and the mark."""
KNOWN_TOPICS = CREATED | PHASE_TOPICS | METADATA_CHANGED | frozenset(MARKS)


class UnknownTopicError(LookupError):
    """An event's topic names no class this code has (it was renamed or removed)."""


# Decoded events: only what the view needs (slotted, not frozen: a catch-up makes one
# per event, and a frozen dataclass's __init__ costs three times as much).


@dataclass(slots=True)
class Created:
    version: int
    timestamp: datetime
    kind: str
    org: str | None
    labels: dict[str, str]
    agent_id: str | None
    workflow_id: str | None
    workflow_instance_id: str | None
    has_callback: bool


@dataclass(slots=True)
class PhaseChanged:
    version: int
    timestamp: datetime
    phase: int
    """0 when the event changed no phase."""
    completed: bool


@dataclass(slots=True)
class LabelsChanged:
    version: int
    timestamp: datetime
    labels: dict[str, str]


@dataclass(slots=True)
class Marked:
    version: int
    timestamp: datetime
    mark: str
    """``cancel_requested``, ``caller_gone`` or ``deleted``."""


Fact = Created | PhaseChanged | LabelsChanged | Marked


def _created(version: int, timestamp: datetime, kind: str, metadata: Any, spec: Any) -> Created:
    agent_id = workflow_id = workflow_instance_id = None
    if isinstance(spec, AgentExecutionSpec):
        agent_id = spec.agent_id or None
    elif isinstance(spec, WorkflowExecutionSpec):
        workflow_id = spec.workflow_id or None
        workflow_instance_id = spec.workflow_instance_id or None
    return Created(
        version=version,
        timestamp=timestamp,
        kind=kind,
        org=metadata.org or None,
        labels=dict(metadata.labels),
        agent_id=agent_id,
        workflow_id=workflow_id,
        workflow_instance_id=workflow_instance_id,
        has_callback=bool(spec.callback_token),
    )


def decode_fact(
    log: LogReader, notification: Notification, plain: Collection[str] = ()
) -> Fact | None:
    """What one ledger event tells the status view (None: not an event it knows).

    ``plain``: topics whose stored state is known to be the library's plain JSON
    (:meth:`LogReader.plain_topics`), read without any further check. Raises when the
    event cannot be decoded (the follower makes it a dead letter).
    """
    topic = notification.topic
    if topic not in KNOWN_TOPICS:
        if not known_topic(topic):
            raise UnknownTopicError(f"topic {topic!r} names no class of this version")
        return None
    version = notification.originator_version
    data = notification.state if topic in plain else log.data(notification)
    if data is not None and topic in PHASE_TOPICS:
        quick = timestamp_and_phase(data)
        if quick is not None:
            return PhaseChanged(version, quick[0], quick[1], topic in COMPLETED)
    state = log.parse(data) if data is not None else None
    if state is not None:
        timestamp = iso_value(state["timestamp"])
        if topic in CREATED:
            return _created(
                version,
                timestamp,
                state["kind"],
                pb_value(state["metadata"]),
                pb_value(state["spec"]),
            )
        if topic in PHASE_TOPICS:
            return PhaseChanged(version, timestamp, int(state["phase"]), topic in COMPLETED)
        if topic in METADATA_CHANGED:
            return LabelsChanged(version, timestamp, {**state["labels"]})
        return Marked(version, timestamp, MARKS[topic])
    return _from_event(version, log.event(notification))


def _from_event(version: int, event: Any) -> Fact | None:
    """A fact from an event decoded by the library's mapper (upcast if need be)."""
    if isinstance(event, Execution.Created):
        return _created(version, event.timestamp, event.kind, event.metadata, event.spec)
    if isinstance(event, (Execution.StatusChanged, Execution.Completed)):
        return PhaseChanged(
            version, event.timestamp, int(event.phase), isinstance(event, Execution.Completed)
        )
    if isinstance(event, Execution.MetadataChanged):
        return LabelsChanged(version, event.timestamp, dict(event.labels))
    if isinstance(event, Execution.CancelRequested):
        return Marked(version, event.timestamp, "cancel_requested")
    if isinstance(event, Execution.CallerGone):
        return Marked(version, event.timestamp, "caller_gone")
    if isinstance(event, Execution.Deleted):
        return Marked(version, event.timestamp, "deleted")
    return None


@dataclass(slots=True)
class Row:
    """An execution's changing columns while a page is applied (times as stored)."""

    kind: str
    phase: int
    completed_at: Any
    updated_at: Any
    version: int
    labels: dict[str, str]
    created_at: Any
    cancel_requested_at: Any = None
    caller_gone_at: Any = None
    deleted: bool = False
    created: Created | None = None
    """The Created event, for a row created by this page."""
    old_labels: dict[str, str] | None = None
    """The labels stored before this page, once an event of the page changed them."""


def apply_fact(row: Row | None, fact: Fact, db_time: Callable[[datetime], Any]) -> Row | None:
    """The row after one event (events at or below the row's version are ignored)."""
    if isinstance(fact, Created):
        if row is not None:
            return row  # Already created.
        at = db_time(fact.timestamp)
        return Row(
            fact.kind,
            int(Phase.PENDING),
            None,
            at,
            fact.version,
            dict(fact.labels),
            at,
            created=fact,
        )
    if row is None or fact.version <= row.version:
        return row
    at = db_time(fact.timestamp)
    if isinstance(fact, PhaseChanged):
        if fact.phase:
            row.phase = fact.phase
        if fact.completed and row.completed_at is None:
            row.completed_at = at
    elif isinstance(fact, LabelsChanged):
        if row.old_labels is None and row.created is None:
            row.old_labels = row.labels
        row.labels = dict(fact.labels)
    elif fact.mark == "cancel_requested":
        row.cancel_requested_at = row.cancel_requested_at or at
    elif fact.mark == "caller_gone":
        row.caller_gone_at = row.caller_gone_at or at
    else:
        row.deleted = True
    row.updated_at = at
    row.version = fact.version
    return row
