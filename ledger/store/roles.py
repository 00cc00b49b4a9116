"""Least privilege on PostgreSQL: who may do what to the ledger's tables.

Three group roles (NOLOGIN; grant them to the login roles your processes use):

- ``<prefix>_writer``: the commands (create, status, complete, fail, cancel). It
  reads the ledger's events and appends only through the ledger's insert
  functions (``SECURITY DEFINER``, owned by the owner): it has no INSERT, UPDATE,
  DELETE or TRUNCATE on any events table, so it cannot alter history. It manages
  the secret-value keys (insert, read, destroy).
- ``<prefix>_follower``: the dispatcher and the views. It reads the ledger's
  events and cannot append to or alter them (nor call the ledger's insert
  functions, nor read the secret-value keys); it writes its own tables (the
  dispatcher's log through its functions, the views' rows and positions).
- ``<prefix>_reader``: the CLI's read commands (show, history, list, audit,
  projections status). SELECT only, and not the secret-value keys: secret
  values read back blank.

The tables, functions and this script are set up by the schema's owner:
``ledger setup`` (creates everything), then ``ledger roles | psql`` (or run the
output of :func:`roles_sql`). Runtime processes then set ``CREATE_TABLE=false``
(the ``eventsourcing`` library's own variable, which the ledger honours too) so
that they never try to create anything.
"""

from __future__ import annotations

import re

from ledger.contract.names import KEYS_TABLE, LEDGER_EVENTS_TABLE, VAULT_TABLE

ROLE_PREFIX = "ledger"
LEDGER_TABLE = LEDGER_EVENTS_TABLE

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def roles_sql(schema: str, prefix: str = ROLE_PREFIX) -> str:
    """The SQL that creates the three roles (when missing) and grants their rights.

    Run it as the owner of the schema's tables, after ``ledger setup``; running it
    again is harmless. ``schema`` and ``prefix`` must be plain lowercase identifiers.
    """
    for name, value in (("schema", schema), ("prefix", prefix)):
        if not _IDENTIFIER.match(value):
            msg = f"{name} {value!r} must be a lowercase identifier (a-z, 0-9, _)"
            raise ValueError(msg)
    writer, follower, reader = (f"{prefix}_{r}" for r in ("writer", "follower", "reader"))
    # Identifiers are checked above; the values are SQL text, not user data.
    return f"""\
-- Least-privilege roles for the execution ledger in schema {schema}.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{writer}')
    THEN CREATE ROLE {writer} NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{follower}')
    THEN CREATE ROLE {follower} NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{reader}')
    THEN CREATE ROLE {reader} NOLOGIN; END IF;
END $$;

GRANT USAGE ON SCHEMA {schema} TO {writer}, {follower}, {reader};
REVOKE CREATE ON SCHEMA {schema} FROM {writer}, {follower}, {reader};
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {writer}, {follower}, {reader};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC, {writer}, {follower}, {reader};

-- Everyone may read; nobody but the owner may write the ledger's events directly.
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {writer}, {follower}, {reader};
REVOKE SELECT ON {schema}.{VAULT_TABLE} FROM {follower}, {reader};

-- The writer appends through the ledger's insert functions only.
DO $$ DECLARE f record; BEGIN
  FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = '{schema}' AND p.proname LIKE '{LEDGER_TABLE}%'
  LOOP EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {writer}', f.sig); END LOOP;
END $$;
GRANT INSERT, DELETE ON {schema}.{VAULT_TABLE} TO {writer};

-- The follower writes every table but the ledger's, the vault and the key record,
-- and calls
-- every function but the ledger's.
DO $$ DECLARE t record; f record; BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'
           AND tablename NOT IN ('{LEDGER_TABLE}', '{VAULT_TABLE}', '{KEYS_TABLE}')
  LOOP EXECUTE format(
    'GRANT INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.%I TO {follower}', t.tablename);
  END LOOP;
  FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = '{schema}' AND p.proname NOT LIKE '{LEDGER_TABLE}%'
  LOOP EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {follower}', f.sig); END LOOP;
END $$;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {follower};
"""  # noqa: S608
