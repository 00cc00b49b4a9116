"""Reading what is committed now, without waiting for the readable head.

A follower that must see every event in notification id order reads up to the
readable head (:mod:`ledger.store.horizon`), which waits until every transaction
that may still commit a lower id has ended: with other work in the PostgreSQL
cluster, milliseconds to seconds. A follower that only needs to see every event
*once, eventually* (``ledger serve``'s ``subscribe``, which orders each execution's
events by version itself) can read what is committed now instead, and come back
for the ids it passed: :func:`select_committed` returns the committed rows above a
position together with those of given ids below it (the ones passed so far),
in one statement, by id. :class:`projections.subscription.EagerSubscription`
keeps that bookkeeping.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from eventsourcing.persistence import Notification
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from ledger.store.recorder import notifications_from_rows

__all__ = ["select_committed"]

_STATEMENTS: dict[tuple[str, str], bytes] = {}


def _statement(schema: str, table: str) -> bytes:
    statement = _STATEMENTS.get((schema, table))
    if statement is None:
        columns = SQL("notification_id, originator_id, originator_version, topic, state")
        statement = _STATEMENTS[(schema, table)] = (
            SQL(
                "(SELECT {columns} FROM {table} WHERE notification_id = ANY(%s::bigint[])) "
                "UNION ALL "
                "(SELECT {columns} FROM {table} WHERE notification_id > %s "
                "ORDER BY notification_id LIMIT %s) "
                "ORDER BY 1"
            )
            .format(columns=columns, table=Identifier(schema, table))
            .as_bytes(None)
        )
    return statement


def select_committed(
    recorder: Any, after: int, limit: int, passed: Collection[int] = ()
) -> list[Notification]:
    """The committed rows (as ``select_notifications`` returns them) with ids in
    ``passed``, then the first ``limit`` with ids above ``after``, by id, as committed
    when the statement runs: an id above ``after`` that is missing may still commit
    (``recorder`` is a PostgreSQL recorder of :mod:`ledger.store.recorder`)."""
    statement = _statement(recorder.datastore.schema, recorder.events_table_name)
    with recorder.datastore.get_connection() as conn:
        cursor = conn.cursor(row_factory=tuple_row)
        cursor.execute(statement, (list(passed), after, limit), prepare=True, binary=True)
        return notifications_from_rows(cursor.fetchall())
