"""Blue/green rebuilds: a view is rebuilt into tables beside the live ones and
swapped in, in one transaction, only once it has caught up.

:func:`rebuild` takes the view's rebuild lock (:class:`RebuildLock`: a PostgreSQL
advisory lock, an ``flock`` on SQLite), so two rebuilds of one view never run at
once; drops whatever a killed rebuild left; creates ``<table>__next`` for each of
the view's tables (and ``<tracking>__next``, with the current ``__schema__`` row;
index names get a fresh prefix); replays every log the view follows from zero into
them; then swaps them in (:meth:`ViewRecorder.swap_in`) once their positions are at
or past the live view's, catching up again if a live follower went further
meanwhile. Until the swap, readers and live followers use the old tables, whatever
happens to the rebuild: killed, failed, or stopped on a poisoned event (its
``__next`` tables are then dropped, or left to the next rebuild to drop).

On PostgreSQL the rebuilt tables get the grants of the tables they replace (so
``ledger roles`` need not run again); creating them needs the schema's owner, as
``ledger setup`` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from ledger.contract.errors import PermissionDeniedError
from ledger.store.connections import connect
from ledger.store.url import StoreConfig
from projections.views._dialects import ViewStore
from projections.views._follower import Follower, View
from projections.views._recorder import RebuildInProgressError

logger = logging.getLogger(__name__)

NEXT_SUFFIX = "__next"
"""The suffix of a rebuild's tables."""


@contextlib.contextmanager
def rebuild_lock(config: StoreConfig, store: ViewStore, name: str) -> Iterator[None]:
    """Holds the rebuild lock of view ``name`` or raises :class:`RebuildInProgressError`."""
    busy = RebuildInProgressError(
        f"the {name} view is already being rebuilt by another process; "
        "wait for it to end (its rebuild lock is released when it ends or dies)"
    )
    path = store.sqlite_path
    if path is None:
        key = f"ledger-view-rebuild:{config.env.get('POSTGRES_SCHEMA', 'public')}:{name}"
        with connect(config, application_name=f"ledger rebuild {name}") as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            if not row or not row[0]:
                raise busy
            yield  # Closing the connection releases the lock, and so does dying.
        return
    fd = os.open(f"{path}.{name}.rebuild.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield
    finally:
        os.close(fd)  # Releases the flock.


def rebuild(
    config: StoreConfig,
    store: ViewStore,
    view: View[Any],
    *,
    page_size: int,
    stop_on_error: bool = False,
    progress: Callable[[int, int], None] | None = None,
    lock_held: bool = False,
) -> int:
    """Rebuilds ``view`` blue/green (see the module doc); returns the events processed.

    ``progress(done, total)`` is called after each page: log positions covered so far
    and in all (the heads when the rebuild started, summed over the logs followed).
    ``lock_held``: the caller holds the view's :func:`rebuild_lock` already (taken
    where a refusal is answered, e.g. the console's request, and held by the thread
    that rebuilds), so it is not taken again here.
    """
    locked = contextlib.nullcontext() if lock_held else rebuild_lock(config, store, view.name)
    with locked:
        rebuilt_recorder = store.recorder(
            view.schema,
            suffix=NEXT_SUFFIX,
            index_prefix=f"g{secrets.token_hex(4)}_",
            create=False,
        )
        try:
            rebuilt_recorder.drop_tables()  # What a killed rebuild left.
            rebuilt_recorder.create_tables()
        except Exception as e:
            if _permission_denied(e):
                raise PermissionDeniedError(
                    f"rebuilding the {view.name} view creates tables, which this role may not: "
                    "run it as the schema's owner (as `ledger setup`)"
                ) from None
            raise
        rebuilt = type(view)(rebuilt_recorder, view.logs)
        try:
            processed = _replay(rebuilt, page_size, stop_on_error, progress)
            while not view.recorder.swap_in(rebuilt_recorder, list(view.follows)):
                logger.info("%s: the live view moved on; catching up before the swap", view.name)
                processed += _replay(rebuilt, page_size, stop_on_error, None)
        except BaseException:
            with contextlib.suppress(Exception):
                rebuilt_recorder.drop_tables()
            raise
        view.recheck()
        return processed


def _replay(
    view: View[Any],
    page_size: int,
    stop_on_error: bool,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Catches ``view`` up with the heads of its logs now, one log after the other."""
    targets = {log_name: view.logs[log_name].head() for log_name in view.follows}
    total = sum(targets.values())
    processed = 0
    done_before = 0
    for log_name in view.follows:
        follower = Follower(
            view, view.logs[log_name], page_size=page_size, stop_on_error=stop_on_error
        )
        try:

            def report(position: int, base: int = done_before) -> None:
                if progress is not None:
                    progress(min(base + position, total), total)

            processed += follower.catch_up(targets[log_name], report)
            done_before += max(follower.position, targets[log_name])
        finally:
            follower.close()
    if progress is not None:
        progress(total, total)
    return processed


def _permission_denied(error: BaseException) -> bool:
    """Whether the store refused ``error``'s statement to this role."""
    import psycopg

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, psycopg.errors.InsufficientPrivilege):
            return True
        if "permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
