"""Read models: SQL views of the ledger and of the dispatcher's log, kept by page.

Two views live in the *views store* (``config.component_env("views")``: on
PostgreSQL the ledger's own schema, on SQLite a file beside the ledger's,
``ledger.views.db``):

- ``status`` (:mod:`projections.views.status`): one row per execution, follows
  the ledger.
- ``audit`` (:mod:`projections.views.audit`): one row per terminal execution,
  follows the ledger (``Created``/``Completed``) and the dispatcher's log
  (every ``Delivery`` event), with one position per log.

The package in layers, each module importing only those below it (an
import-linter contract in ``pyproject.toml``):

- :mod:`~projections.views._facade`: :class:`Views` (open, catch up, run,
  rebuild, lag), :class:`Lag`, :func:`freeze_startup_objects`;
- :mod:`~projections.views.status`, :mod:`~projections.views.audit`: the views;
- :mod:`~projections.views._rebuild`: blue/green rebuilds and their lock;
- :mod:`~projections.views._follower`: the :class:`View` base and the
  :class:`Follower` that keeps a view up to date with one log (dead letters);
  :mod:`~projections.views._status_facts`: what each event changes in a status row;
- :mod:`~projections.views._logs`: reading and decoding the logs followed;
  :mod:`~projections.views._dialects`: the views store;
  :mod:`~projections.views._status_rows`: the status view's tables and cursors;
- :mod:`~projections.views._postgres`, :mod:`~projections.views._sqlite`: the
  views' SQL on each database;
- :mod:`~projections.views._recorder`: what a view needs of its store (rows,
  positions as compare-and-set, schema versions, the swap, dead letters).

``docs/READ_MODELS.md`` explains schemas, rebuilds and dead letters.

``bench/catchup.py`` measures catch-ups and rebuilds beside raw psycopg.
"""

from projections.views._facade import (
    VIEW_NAMES,
    Lag,
    Views,
    freeze_startup_objects,
)
from projections.views._follower import DEFAULT_PAGE_SIZE, Follower, View
from projections.views._logs import LogReader, timestamp_and_phase
from projections.views._recorder import (
    DeadLetter,
    PoisonedEventError,
    RebuildInProgressError,
    StaleViewError,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "VIEW_NAMES",
    "DeadLetter",
    "Follower",
    "Lag",
    "LogReader",
    "PoisonedEventError",
    "RebuildInProgressError",
    "StaleViewError",
    "View",
    "Views",
    "freeze_startup_objects",
    "timestamp_and_phase",
]
