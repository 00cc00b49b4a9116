"""Reading the events of many aggregates with one query.

The library's recorders read one aggregate's events a query
(``select_events(originator_id)``); a follower that needs a page of aggregates
(the dispatcher: a page of completed executions and their deliveries) would make
one round trip each. :func:`select_events_of` reads them all with one statement,
on the library's SQLite and PostgreSQL recorders (and the ledger's own, which
keep the library's table shape), and leaves decoding to the caller, so that one
aggregate's unreadable event spoils only that aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import AggregateRecorder, StoredEvent
from eventsourcing.popo import POPOAggregateRecorder
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

__all__ = ["select_events_of"]


def select_events_of(
    recorder: AggregateRecorder, originator_ids: Sequence[str]
) -> dict[str, list[StoredEvent]]:
    """Every stored event of each of ``originator_ids``, in version order, by id (an
    id with no events is absent). One query, whatever the number of ids."""
    ids = list(dict.fromkeys(originator_ids))
    if not ids:
        return {}
    if isinstance(recorder, PostgresAggregateRecorder):
        rows = _postgres_rows(recorder, ids)
    elif isinstance(recorder, SQLiteAggregateRecorder):
        rows = _sqlite_rows(recorder, ids)
    elif isinstance(recorder, POPOAggregateRecorder):  # memory://: one read each, no I/O.
        rows = [
            (e.originator_id, e.originator_version, e.topic, e.state)
            for i in ids
            for e in recorder.select_events(i)
        ]
    else:  # pragma: no cover - every recorder the ledger opens is one of the above
        msg = f"cannot read many aggregates from a {type(recorder).__name__}"
        raise TypeError(msg)
    found: dict[str, list[StoredEvent]] = {}
    for originator_id, version, topic, state in rows:
        found.setdefault(str(originator_id), []).append(
            StoredEvent(
                originator_id=str(originator_id),
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
        )
    for events in found.values():
        events.sort(key=lambda e: e.originator_version)
    return found


def _postgres_rows(recorder: PostgresAggregateRecorder, ids: list[str]) -> list[Any]:
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    statement = SQL(
        "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
        "WHERE originator_id = ANY(%b::{id_type}[]) ORDER BY originator_id, originator_version"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
        id_type=Identifier(recorder.datastore.originator_id_type),
    )
    with (
        recorder.datastore.get_connection() as conn,
        conn.cursor(row_factory=tuple_row) as curs,
    ):
        # Binary: the ids go as one array without quoting each, the states come back
        # as they are stored (no hex round trip).
        curs.execute(statement, (ids,), prepare=True, binary=True)
        return curs.fetchall()


def _sqlite_rows(recorder: SQLiteAggregateRecorder, ids: list[str]) -> list[Any]:
    rows: list[Any] = []
    for start in range(0, len(ids), _SQLITE_MAX_IDS):
        chunk = ids[start : start + _SQLITE_MAX_IDS]
        statement = (
            "SELECT originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {recorder.events_table_name} "  # The recorder's table; ids are parameters.
            f"WHERE originator_id IN ({','.join('?' * len(chunk))}) "
            "ORDER BY originator_id, originator_version"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement, chunk)
            rows += [
                (r["originator_id"], r["originator_version"], r["topic"], r["state"])
                for r in c.fetchall()
            ]
    return rows


_SQLITE_MAX_IDS = 900
"""Ids per SQLite statement (old SQLite builds allow 999 variables a statement)."""
