"""Tools for the fault tests (``tests/test_faults.py``): real processes, real servers.

- :class:`PgProxy`: a TCP proxy in front of PostgreSQL that reads the server's
  side of the wire protocol. It can refuse connections (PostgreSQL "down":
  connection refused, as during a restart), drop ``NotificationResponse``
  messages (a lost NOTIFY) and cut a connection right after the server
  committed a transaction, before the client hears of it (a lost COMMIT ack).
  Clients going through it must not ask for TLS: :data:`PLAIN_PG_ENV`.
- :func:`backends` / :func:`terminate_backends`: this test's own PostgreSQL
  backends, by ``application_name`` (``PGAPPNAME`` of the processes the test
  starts), never anyone else's: other test runs share the cluster.
- :class:`TemporalDevServer`: a dedicated ``temporal server start-dev`` on a
  fixed port with its state in a file, so it can be SIGKILLed and started again.
- The writer process (``python -m tests.fault_tools writer ...``): appends
  lifecycles (or completes given executions) in a loop and records every
  command's result as a JSON line; on :class:`~ledger.contract.errors.StoreUnavailableError`
  it retries the same command, as a client is told to.
- :func:`check_lifecycle`: an execution's history is a whole-command prefix of
  the writer's lifecycle, with no command applied twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.api.commons.v1.metadata_pb2 import ApiResourceMetadata
from ledger.application import HistoryEntry, Ledger, open_ledger
from ledger.contract.errors import StoreUnavailableError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
)
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution

ROOT = Path(__file__).resolve().parent.parent

PLAIN_PG_ENV = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}
"""libpq settings for clients of :class:`PgProxy` (it reads the protocol, so no TLS)."""


# PostgreSQL.


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
        import asyncio

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


# Processes the tests start.


def python_process(
    args: Sequence[str], env: dict[str, str], log_file: Path
) -> subprocess.Popen[bytes]:
    """``python <args>`` in the project root, output appended to ``log_file``."""
    full_env = dict(os.environ)
    full_env.pop("LEDGER_CIPHER_KEY", None)
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``; returns its code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


# The writer.


@dataclass(frozen=True)
class CommandResult:
    """One command the writer ran, as it recorded it."""

    lifecycle: int
    execution_id: str
    step: str
    at: float
    ok: bool
    error: str = ""
    message: str = ""

    @classmethod
    def parse(cls, line: str) -> CommandResult:
        return cls(**json.loads(line))


def read_results(path: Path) -> list[CommandResult]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # The last line may be half-written while the writer runs.
    results = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            results.append(CommandResult.parse(line))
    return results


STEPS = ("create", "start", "finish")
"""The writer's lifecycle: ``create`` (Created), ``start`` (IN_PROGRESS with a
message: StatusChanged), ``finish`` (COMPLETED by patch with a message:
StatusChanged and Completed, in one command)."""


def _run_step(ledger: Ledger, step: str, n: int, execution_id: str) -> None:
    if step == "create":
        ledger.create(
            AgentExecution(
                metadata=ApiResourceMetadata(id=execution_id),
                spec=AgentExecutionSpec(agent_id="writer", message=f"lifecycle {n}"),
            )
        )
    elif step == "start":
        ledger.update_status(
            execution_id,
            AgentExecutionStatus(
                phase=Phase.IN_PROGRESS,  # type: ignore[arg-type]
                messages=[AgentMessage(type=MESSAGE_AI, content=f"start {n}")],
            ),
        )
    else:
        ledger.update_status(
            execution_id,
            AgentExecutionStatus(
                phase=Phase.COMPLETED,  # type: ignore[arg-type]
                messages=[AgentMessage(type=MESSAGE_AI, content=f"finish {n}")],
            ),
        )


def writer_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault_tools writer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stop-file", required=True, type=Path)
    parser.add_argument("--complete", default="", help="file of execution ids to complete")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    ids: list[str] = Path(args.complete).read_text().split() if args.complete else []
    steps = ("start", "finish") if ids else STEPS
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with args.out.open("a", buffering=1) as out:

        def record(n: int, execution_id: str, step: str, error: BaseException | None) -> None:
            line: dict[str, Any] = {
                "lifecycle": n,
                "execution_id": execution_id,
                "step": step,
                "at": time.time(),
                "ok": error is None,
            }
            if error is not None:
                line["error"] = f"{type(error).__module__}.{type(error).__qualname__}"
                line["message"] = str(error)[:500]
            out.write(json.dumps(line) + "\n")

        while True:
            try:
                ledger = open_ledger(args.url)
                break
            except StoreUnavailableError as e:
                record(-1, "", "open", e)
                time.sleep(0.2)
        n = 0
        while not args.stop_file.exists() and not stopping.is_set():
            if ids:
                if n >= len(ids):
                    break
                execution_id = ids[n]
            else:
                execution_id = AGENT_EXECUTION.new_id()
            for step in steps:
                while True:
                    try:
                        _run_step(ledger, step, n, execution_id)
                    except StoreUnavailableError as e:
                        record(n, execution_id, step, e)  # Retryable: retry the same command.
                        time.sleep(0.2)
                        continue
                    except Exception as e:
                        record(n, execution_id, step, e)  # Not retryable: next lifecycle.
                        break
                    record(n, execution_id, step, None)
                    break
            n += 1
            if args.pause:
                time.sleep(args.pause)
        ledger.close()
    return 0


def check_lifecycle(history: Sequence[HistoryEntry], n: int) -> int:
    """Checks one writer execution's history; returns how many commands it holds (1-3).

    Each command's events are all there or none (``finish`` writes two events),
    none is applied twice, and each carries what its command said.
    """
    types = [h.type for h in history]
    whole = [
        ["Created"],
        ["Created", "StatusChanged"],
        ["Created", "StatusChanged", "StatusChanged", "Completed"],
    ]
    assert types in whole, f"not a whole-command prefix of the lifecycle: {types}"
    commands = whole.index(types) + 1
    created = history[0].event
    assert isinstance(created, Execution.Created)
    assert created.spec.message == f"lifecycle {n}"  # type: ignore[attr-defined]
    if commands >= 2:
        assert history[1].phase is Phase.IN_PROGRESS
        assert _messages(history[1]) == [f"start {n}"]
    if commands == 3:
        assert _messages(history[2]) == [f"finish {n}"]
        assert history[3].phase is Phase.COMPLETED
    return commands


def _messages(entry: HistoryEntry) -> list[str]:
    event = entry.event
    assert isinstance(event, Execution.StatusChanged)
    return [m.content for m in event.patch.messages]  # type: ignore[attr-defined]


def writer_executions(ledger: Ledger) -> dict[str, int]:
    """Every execution id in the ledger, with its number of events."""
    counts: dict[str, int] = {}
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start=start, limit=1000)
        for notification in page:
            key = str(notification.originator_id)
            counts[key] = counts.get(key, 0) + 1
        if len(page) < 1000:
            return counts
        start = page[-1].id + 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        raise SystemExit(writer_main(sys.argv[2:]))
    raise SystemExit(f"usage: python -m tests.fault_tools writer ... (not {sys.argv[1:2]})")
