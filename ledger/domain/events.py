"""The base of domain events whose aggregates have text ids.

The ``eventsourcing`` library's :class:`~eventsourcing.domain.DomainEvent`
insists on UUID ids; the ledger's ids are text (``aex-...``, ``wex-...``), so its
aggregates (executions, deliveries) use this frozen-dataclass base instead.
"""

from __future__ import annotations

from datetime import datetime

from eventsourcing.domain import CanMutateAggregate, MetaDomainEvent
from eventsourcing.utils import get_topic, register_topic


class TextIdEvent(CanMutateAggregate[str], metaclass=MetaDomainEvent):
    """An aggregate event with a text ``originator_id``."""

    originator_id: str
    originator_version: int
    timestamp: datetime


def register_topics(aggregate: type, topic: str, legacy_topic: str) -> None:
    """Checks that ``aggregate`` is stored under ``topic`` and makes ``legacy_topic``
    (where an earlier version of the code kept the class) resolve to it too, for the
    aggregate and each of its event classes (``<topic>.<Event>``)."""
    if get_topic(aggregate) != topic:  # pragma: no cover - a moved class without a new name
        msg = f"{aggregate.__qualname__} is stored as {get_topic(aggregate)!r}, not {topic!r}"
        raise RuntimeError(msg)
    register_topic(legacy_topic, aggregate)
    for name, value in vars(aggregate).items():
        if isinstance(value, type) and issubclass(value, TextIdEvent):
            register_topic(f"{legacy_topic}.{name}", value)
