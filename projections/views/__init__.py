"""Read models: SQL views of the ledger and of the dispatcher's log."""

from projections.views.facade import (
    DEFAULT_PAGE_SIZE,
    Follower,
    Lag,
    Views,
    freeze_startup_objects,
    timestamp_and_phase,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Follower",
    "Lag",
    "Views",
    "freeze_startup_objects",
    "timestamp_and_phase",
]
