"""The completion audit as the CLI shows it (``ledger audit``).

A row of the audit view becomes a dict in which only a delivery has a delivery
time: ``delivered_at`` and ``latency_ms`` are kept for ``delivered``, ``stale``
and ``stale_after_attempt`` (Temporal answered); for ``rejected``,
``no_callback`` and ``parked`` they are None and ``recorded_at`` says when the
outcome was recorded. An execution without a callback token is ``no_callback``
even before a dispatcher has recorded it (the view says ``pending``), and is
never listed by ``--pending``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ledger.cli._input import UsageError
from ledger.cli._tables import Column, duration, phase_name, timer

DELIVERIES = frozenset({"delivered", "stale", "stale_after_attempt"})
"""Outcomes for which Temporal answered a call: they have a delivery time."""


def audit_dict(row: Any) -> dict[str, Any]:
    """An audit row for people and scripts (times in ISO-8601, full precision)."""
    story = asdict(row)
    recorded_at = story["delivered_at"]
    if story["outcome"] == "pending" and not story["has_callback"]:
        story["outcome"] = "no_callback"
    if story["outcome"] not in DELIVERIES:
        story["delivered_at"] = None
        story["latency_ms"] = None
    story["recorded_at"] = recorded_at
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in story.items()}


def audit_columns(utc: bool) -> list[Column]:
    """The audit's columns, most important first."""
    return [
        Column("execution_id", "execution", 0),
        Column("phase", "phase", 0, phase_name),
        Column("outcome", "outcome", 0, lambda v: str(v).replace("_", " ")),
        Column("latency_ms", "latency", 1, duration),
        Column("completed_at", "completed", 2, timer(utc)),
        Column("attempts", "attempts", 3),
        Column("delivered_at", "delivered", 4, timer(utc)),
        Column("kind", "kind", 5),
    ]


def pending_page(views: Any, limit: int, after: str | None) -> tuple[list[Any], str | None]:
    """Up to ``limit`` callbacks pending or parked after the execution ``after`` (the
    cursor a previous page printed), oldest completion first; and the next cursor."""
    last = None
    if after is not None:
        last = views.audit.get(after)
        if last is None:
            raise UsageError(f"--after {after!r} is not an execution of the audit")
    found: list[Any] = []
    while True:
        batch = views.audit.pending(max(limit, 100), last)
        found += [row for row in batch if row.has_callback or row.outcome != "pending"]
        if len(found) > limit:
            return found[:limit], found[limit - 1].execution_id
        if len(batch) < max(limit, 100):
            return found, None
        last = batch[-1]
