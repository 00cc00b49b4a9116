"""The SQL of the recorders' server-side insert functions (see :mod:`ledger.store.recorder`).

Each function is plpgsql, ``SECURITY DEFINER`` (a writer role needs only EXECUTE),
created with ``CREATE OR REPLACE`` in the recorder's schema. Its body begins with
:func:`begin_insert`: ``lock_timeout`` for the transaction, then the transaction
takes its transaction id *before* any notification id is drawn, the first rule of
the readable head (:mod:`ledger.store.horizon`). No table lock: writers do not
wait for each other.
"""

from __future__ import annotations

import hashlib

from psycopg.sql import SQL, Composed, Identifier

_MAX_IDENTIFIER_LEN = 63


def db_function_name(events_table_name: str, suffix: str) -> str:
    """The name of the server-side function for ``events_table_name``.

    ``<table>_<suffix>`` when that fits in PostgreSQL's 63 bytes, else the
    table name shortened and a hash of it, so that two tables never share one.
    """
    name = f"{events_table_name}_{suffix}"
    if len(name.encode()) <= _MAX_IDENTIFIER_LEN:
        return name
    digest = hashlib.sha256(events_table_name.encode()).hexdigest()[:12]
    keep = _MAX_IDENTIFIER_LEN - len(suffix) - len(digest) - 2
    return f"{events_table_name.encode()[:keep].decode(errors='ignore')}_{digest}_{suffix}"


def create_function(
    schema: str,
    name: str,
    parameters: Composed,
    returns: SQL,
    body: Composed,
    *,
    declare: SQL | None = None,
) -> Composed:
    """``CREATE OR REPLACE FUNCTION ... SECURITY DEFINER``: sets ``lock_timeout``
    (the first parameter), then runs ``body`` (which names tables with their schema)."""
    return SQL(
        "CREATE OR REPLACE FUNCTION {schema}.{function}(p_lock_timeout text, {parameters}) "
        "RETURNS {returns} LANGUAGE plpgsql "
        # Runs with its owner's rights: a writer role needs only EXECUTE (and
        # SELECT), never INSERT, UPDATE, DELETE or TRUNCATE on the events table.
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        "AS $BODY$ "
        "{declare}"
        "BEGIN "
        "PERFORM set_config('lock_timeout', p_lock_timeout, true); "
        "{body}"
        "END; "
        "$BODY$"
    ).format(
        schema=Identifier(schema),
        function=Identifier(name),
        parameters=parameters,
        returns=returns,
        declare=SQL("DECLARE {} ").format(declare) if declare is not None else SQL(""),
        body=body,
    )


def call_function(schema: str, name: str, placeholders: Composed, *, many: bool) -> bytes:
    """The call of a db function, rendered once (psycopg caches a bytes query's
    conversion; a ``Composed`` would be rendered again on every execute)."""
    template = (
        "SELECT * FROM {schema}.{function}(%s::text, {placeholders})"
        if many
        else "SELECT {schema}.{function}(%s::text, {placeholders})"
    )
    return (
        SQL(template)
        .format(schema=Identifier(schema), function=Identifier(name), placeholders=placeholders)
        .as_bytes(None)
    )


def begin_insert(channel: str | None) -> Composed:
    """plpgsql: take the transaction's id before drawing notification ids; then
    ``NOTIFY`` the channel when one is given (delivered at commit)."""
    notify = SQL("NOTIFY {}; ").format(Identifier(channel)) if channel else SQL("")
    return SQL("PERFORM pg_current_xact_id(); {notify}").format(notify=notify)


def insert_many(schema: str, table: str, channel: str | None) -> Composed:
    """plpgsql: insert the arrays' rows, return their ids in order."""
    return begin_insert(channel) + SQL(
        "RETURN QUERY "
        "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
        "SELECT * FROM unnest("
        "p_originator_ids, p_originator_versions, p_topics, p_states) "
        "RETURNING notification_id; "
    ).format(schema=Identifier(schema), table=Identifier(table))


def insert_one(schema: str, table: str, channel: str | None) -> Composed:
    """plpgsql: insert one row, return its id."""
    return begin_insert(channel) + SQL(
        "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
        "VALUES (p_originator_id, p_originator_version, p_topic, p_state) "
        "RETURNING notification_id INTO v_notification_id; "
        "RETURN v_notification_id; "
    ).format(schema=Identifier(schema), table=Identifier(table))


def track_then_insert(schema: str, tracking_table: str, insert: Composed) -> Composed:
    """plpgsql: upsert the tracking row, only forward (else ``unique_violation``),
    then, when there are events, ``insert``."""
    return SQL(
        "INSERT INTO {schema}.{tracking} AS t (application_name, notification_id) "
        "VALUES (p_application_name, p_notification_id) "
        "ON CONFLICT (application_name) DO UPDATE "
        "SET notification_id = p_notification_id "
        "WHERE t.notification_id < p_notification_id; "
        "IF NOT FOUND THEN "
        "RAISE EXCEPTION 'Failed to record tracking for % %', "
        "p_application_name, p_notification_id "
        "USING ERRCODE = 'unique_violation'; "
        "END IF; "
        "IF cardinality(p_originator_ids) > 0 THEN "
        "{insert} "
        "END IF; "
    ).format(schema=Identifier(schema), tracking=Identifier(tracking_table), insert=insert)
