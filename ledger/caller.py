"""Alias of :mod:`ledger.temporal.caller`, kept so that round 1's imports keep working."""

from ledger.temporal.caller import ExecutionActivities, execution_id_for

__all__ = ["ExecutionActivities", "execution_id_for"]
