"""The base of domain events whose aggregates have text ids.

The ``eventsourcing`` library's :class:`~eventsourcing.domain.DomainEvent`
insists on UUID ids; the ledger's ids are text (``aex-...``, ``wex-...``), so its
aggregates (executions, deliveries) use this frozen-dataclass base instead.
"""

from __future__ import annotations

from datetime import datetime

from eventsourcing.domain import CanMutateAggregate, MetaDomainEvent


class TextIdEvent(CanMutateAggregate[str], metaclass=MetaDomainEvent):
    """An aggregate event with a text ``originator_id``."""

    originator_id: str
    originator_version: int
    timestamp: datetime
