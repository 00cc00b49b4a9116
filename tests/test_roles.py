"""Least privilege on PostgreSQL: the documented roles, proven with real logins."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger import (
    PermissionDeniedError,
    open_ledger,
)
from ledger.application import Ledger
from ledger.store.roles import roles_sql
from tests.support.builders import agent_execution, secret_env

LEDGER = str(Path(sys.executable).parent / "ledger")
NO_CREATE = {"CREATE_TABLE": "false"}


_resource = partial(
    agent_execution, agent_id="a", message="m", token=b"token", env=secret_env({"KEY": "s3cret"})
)


class Roles:
    """A set-up schema, its roles (unique prefix) and a login user in each."""

    def __init__(self, server: str, url: str) -> None:
        self.server = server
        self.url = url
        self.schema = url.rsplit("schema=", 1)[1]
        self.prefix = "t" + uuid.uuid4().hex[:8]
        self.logins = {
            role: f"{self.prefix}_{role}_login" for role in ("writer", "follower", "reader")
        }

    def setup(self) -> None:
        result = subprocess.run(
            [LEDGER, "setup", "--url", self.url],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        script = roles_sql(self.schema, self.prefix)
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(script)
            for role, login in self.logins.items():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                        sql.Identifier(login), sql.Identifier(f"{self.prefix}_{role}")
                    )
                )

    def url_as(self, role: str) -> str:
        base = self.server.split("://", 1)[1].split("@", 1)[1]
        return f"postgresql://{self.logins[role]}@{base}?schema={self.schema}"

    def connect_as(self, role: str) -> psycopg.Connection[tuple[object, ...]]:
        base = self.server.split("?", 1)[0]
        return psycopg.connect(base, user=self.logins[role], autocommit=True)

    def drop(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
            for role in ("writer", "follower", "reader"):
                for name in (self.logins[role], f"{self.prefix}_{role}"):
                    if _exists(conn, name):
                        owned = sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name))
                        conn.execute(owned)
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


@pytest.fixture
def roles(postgres_server: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Roles]:
    made = Roles(postgres_server, pg_url)
    made.setup()
    monkeypatch.setenv("CREATE_TABLE", "false")
    try:
        yield made
    finally:
        made.drop()


def _open(roles: Roles, role: str) -> Ledger:
    return open_ledger(roles.url_as(role))


def _denied(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_writer_appends_only_through_the_ledger(roles: Roles) -> None:
    with _open(roles, "writer") as ledger:
        record = ledger.create(_resource())
        assert ledger.get(record.id).spec.runtime_env["KEY"].value == "s3cret"
        ledger.complete(record.id, {"ok": True})
        assert ledger.read(record.id).version == 2
    table = f'"{roles.schema}".ledger_events'
    with roles.connect_as("writer") as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
        _denied(
            conn,
            f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
            "VALUES ('aex-x', 1, 't', '')",
        )
    with roles.connect_as("writer") as conn:
        _denied(conn, f"UPDATE {table} SET topic = 'x'")
    with roles.connect_as("writer") as conn:
        _denied(conn, f"DELETE FROM {table}")
    with roles.connect_as("writer") as conn:
        _denied(conn, f"TRUNCATE {table}")


def test_the_follower_reads_the_ledger_and_writes_only_its_own_tables(roles: Roles) -> None:
    from projections.dispatch.log import DispatcherLog
    from projections.views import Views

    with _open(roles, "writer") as ledger:
        record = ledger.create(_resource())
        ledger.complete(record.id)
    follower_url = roles.url_as("follower")
    from ledger.store.url import parse_url

    config = parse_url(follower_url)
    views = Views(config)
    try:
        views.catch_up()
        assert views.audit.get(record.id) is not None
        assert views.status.counts_by_phase().get("EXECUTION_COMPLETED") == 1
    finally:
        views.close()
    log = DispatcherLog(config.component_env("dispatcher"))
    try:
        assert log.position() is None
    finally:
        log.close()
    with _open(roles, "follower") as ledger:
        # Reading works; secret values read blank (no access to the keys).
        assert ledger.read(record.id).version == 2
        with pytest.raises(PermissionDeniedError):
            ledger.create(_resource())
    table = f'"{roles.schema}".ledger_events'
    with roles.connect_as("follower") as conn:
        _denied(conn, f"DELETE FROM {table}")
    with roles.connect_as("follower") as conn:
        _denied(conn, f'SELECT * FROM "{roles.schema}".ledger_secret_keys')


def test_the_reader_reads_and_cannot_write(roles: Roles) -> None:
    with _open(roles, "writer") as ledger:
        record = ledger.create(_resource())
    env = {**os.environ, "LEDGER_URL": roles.url_as("reader"), **NO_CREATE}
    shown = subprocess.run(
        [LEDGER, "show", record.id, "--json"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert record.id in shown.stdout
    written = subprocess.run(
        [LEDGER, "complete", record.id],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert written.returncode == 1
    assert written.stderr.startswith("error: ") and "permission denied" in written.stderr
    assert "Traceback" not in written.stderr
    with _open(roles, "reader") as ledger:
        assert ledger.get(record.id).spec.runtime_env["KEY"].value == ""  # no key access
    with _open(roles, "writer") as ledger:
        assert ledger.read(record.id).version == 1  # nothing was written


def test_roles_sql_refuses_odd_identifiers() -> None:
    with pytest.raises(ValueError, match="lowercase identifier"):
        roles_sql('x"; DROP TABLE y; --')


def test_a_rebuild_by_the_owner_keeps_the_roles_grants(roles: Roles) -> None:
    from ledger.store.url import parse_url
    from projections.views import Views

    with _open(roles, "writer") as ledger:
        first = ledger.create(_resource()).id
    owner = Views(parse_url(roles.url))
    try:
        assert owner.rebuild("status") == 1  # New tables, swapped in.
    finally:
        owner.close()
    with _open(roles, "writer") as ledger:
        second = ledger.create(_resource()).id
    # The follower still writes the rebuilt view, the reader still reads it.
    follower = Views(parse_url(roles.url_as("follower")))
    try:
        follower.catch_up(["status"])
        assert {row.id for row in follower.status.snapshot()} == {first, second}
    finally:
        follower.close()
    env = {**os.environ, "LEDGER_URL": roles.url_as("reader"), **NO_CREATE}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LEDGER, *args], check=False, capture_output=True, text=True, env=env, timeout=60
        )

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout
    # A rebuild creates tables: the follower may not, and is told so in one line.
    env["LEDGER_URL"] = roles.url_as("follower")
    refused = cli("projections", "rebuild", "status")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "owner" in refused.stderr


def test_a_table_new_in_a_schema_version_gets_its_views_grants(roles: Roles) -> None:
    """Upgrading a status view of schema 2 (no ``view_status_minutes``): the owner's
    rebuild swaps the new table in with the grants of the view's tracking table, so
    the follower writes it and the reader reads it without ``ledger roles`` again."""
    from datetime import UTC, datetime, timedelta

    from ledger.store.url import parse_url
    from projections.views import Views

    with _open(roles, "writer") as ledger:
        ledger.create(_resource())
    with psycopg.connect(roles.server, autocommit=True) as conn:  # The owner.
        conn.execute(f'DROP TABLE "{roles.schema}".view_status_minutes')
        conn.execute(
            f'UPDATE "{roles.schema}".view_status_tracking SET notification_id = 2 '
            "WHERE application_name = '__schema__'"
        )
    owner = Views(parse_url(roles.url))
    try:
        assert owner.stale(["status"]) == ["status"]
        owner.rebuild("status")
    finally:
        owner.close()
    with _open(roles, "writer") as ledger:
        ledger.create(_resource())
    since = datetime.now(UTC) - timedelta(minutes=5)
    follower = Views(parse_url(roles.url_as("follower")))
    try:
        follower.catch_up(["status"])  # Writes view_status_minutes.
    finally:
        follower.close()
    reader = Views(parse_url(roles.url_as("reader")))
    try:
        assert sum(reader.status.events_per_minute(since, 10)) == 2
    finally:
        reader.close()
