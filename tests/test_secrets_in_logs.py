"""No log line at any level holds a whole callback token or a secret value.

One full run on PostgreSQL, against the session's Temporal dev server, with
everything it says captured:

- every logging record: a handler on the root logger at DEBUG, and the root,
  ``ledger``, ``projections``, ``eventsourcing``, ``temporalio``, ``psycopg``
  and ``asyncio`` loggers set to DEBUG for the run. Each record is searched as
  formatted (message, exception text) and with its extra attributes;
- this process's own stdout and stderr at the file-descriptor level (where the
  Temporal SDK's core writes its logs);
- stdout and stderr of every subprocess: ``ledger create/status/complete``,
  ``ledger show``/``history`` with and without ``--json``, and
  ``ledger dispatcher run``.

The run: real workflows (``tests/e2e_flows.py``) await executions through the
caller activity, so each execution carries a real Temporal task token, known
only at run time (read back with ``ledger.get(id).spec.callback_token``); a
hand-made token and a CLI-created one too; ``is_secret`` runtime_env values
in every spec; status updates, completion, failure and cancellation; the
dispatcher delivering them; a delivery parked while Temporal is unreachable
(retry and parked logs); and ``ledger dispatcher run`` delivering it later.
``ledger demo`` is checked on its own (it runs its own dev server and tokens).

A token must not appear in any encoding: bytes repr, base64 (standard and
URL-safe, padded or not), hex, base32, protobuf text-format escaping, Latin-1
text, nor inside a longer base64 or hex blob (a serialized message holding it);
a secret value neither plain nor in base64. So that the search cannot pass
vacuously, it is tested on planted leaks, and the capture must hold DEBUG records
from ``projections``, ``temporalio`` and ``psycopg``, the output of every command,
and the redacted form (the first 20 characters of the base64 and the length)
where the code logs a token. The ledger's own output and the Temporal SDK's
loggers are judged by separate tests. During the run the root logger has only
the capturing handler, so a failure report never prints a captured token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.protobuf import text_encoding
from psycopg import sql
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from ledger.api.agentexecution.v1.enum_pb2 import MESSAGE_AI
from ledger.api.agentexecution.v1.status_pb2 import AgentMessage
from ledger.api.workflowexecution.v1.status_pb2 import WorkflowTask
from ledger.application import Ledger, open_ledger
from ledger.contract.errors import ExecutionNotFoundError
from ledger.contract.kinds import (
    AGENT_EXECUTION,
    WORKFLOW_EXECUTION,
    AgentExecutionStatus,
    Kind,
    WorkflowExecutionStatus,
)
from ledger.contract.phases import Phase
from ledger.store.url import parse_url
from ledger.temporal.caller import ExecutionActivities, execution_id_for
from projections.dispatch.calls import RetryPolicy
from projections.dispatch.dispatcher import Dispatcher
from tests.e2e_flows import AwaitAgentExecution, AwaitWorkflowExecution
from tests.support.builders import agent_execution, secret_env, workflow_execution

pytestmark = [pytest.mark.temporal, pytest.mark.postgres, pytest.mark.slow]

LEDGER = str(Path(sys.executable).parent / "ledger")
RUN_ID = uuid.uuid4().hex[:12]
SECRET_API = f"sk-live-{RUN_ID}-api-key-value"
SECRET_DB = f"pg-password-{RUN_ID}-value"
SECRET_CLI = f"cli-secret-{RUN_ID}-value"
SECRETS = [SECRET_API, SECRET_DB, SECRET_CLI]
HANDMADE_TOKEN = f"handmade-token-{RUN_ID}:".encode() + bytes(range(256))
"""A token Temporal cannot decode (every byte value, so no encoding hides it)."""
CLI_TOKEN = f"cli-token-{RUN_ID}:".encode() + bytes(range(255, -1, -1))
LOGGERS = ["", "ledger", "projections", "eventsourcing", "temporalio", "psycopg", "asyncio"]
FAST_RETRY = RetryPolicy(
    max_tries=3, initial_backoff=0.05, max_backoff=0.1, rpc_timeout=timedelta(seconds=2)
)
SCENARIO_TIMEOUT = 120.0


# What a token looks like, encoded.


def encodings(token: bytes) -> dict[str, str]:
    """Every form in which a whole token could end up in a line of text."""
    b64 = base64.b64encode(token).decode()
    urlsafe = base64.urlsafe_b64encode(token).decode()
    forms = {
        "bytes repr": repr(token),
        "bytes repr, unquoted": repr(token)[2:-1],
        "base64": b64,
        "base64, unpadded": b64.rstrip("="),
        "urlsafe base64": urlsafe,
        "urlsafe base64, unpadded": urlsafe.rstrip("="),
        "hex": token.hex(),
        "HEX": token.hex().upper(),
        "base32": base64.b32encode(token).decode(),
        "protobuf text format": text_encoding.CEscape(token, as_utf8=False),
        "protobuf text format, utf-8": text_encoding.CEscape(token, as_utf8=True),
        "latin-1 text": token.decode("latin-1"),
        "utf-8 text, replaced": token.decode("utf-8", "replace"),
    }
    return {name: form for name, form in forms.items() if len(form) >= 16}


def redacted(token: bytes) -> str:
    """The documented redacted form, computed here independently of ledger.redaction."""
    return f"{base64.b64encode(token).decode()[:20]}…({len(token)} bytes)"


# The capture.


@dataclass(frozen=True)
class Line:
    source: str
    """A logger name, ``fd`` (this process's own output) or ``cli: <command>``."""
    level: str
    text: str
    where: str = ""
    """For a logging record: its source line and message template (safe to print)."""


class CapturingHandler(logging.Handler):
    """Keeps every record, formatted, with its extra attributes."""

    STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "asctime",
        "taskName",
    }

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[Line] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as e:  # A record that cannot format is still searched, raw.
            text = f"{record.msg!r} {record.args!r} (unformattable: {e!r})"
        extras = {k: v for k, v in vars(record).items() if k not in self.STANDARD}
        if extras:
            text += f" extras={extras!r}"
        where = f"{record.filename}:{record.lineno} {str(record.msg)[:60]!r}"
        self.lines.append(Line(record.name, record.levelname, text, where))


@contextlib.contextmanager
def all_logging_at_debug() -> Iterator[CapturingHandler]:
    handler = CapturingHandler()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(lg, lg.level, lg.disabled, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if lg.name != "root":
            lg.propagate = True
    root = logging.getLogger()
    others = root.handlers[:]
    root.handlers = [handler]  # Only here: pytest's capture would print tokens on failure.
    try:
        yield handler
    finally:
        root.handlers = others
        for lg, level, disabled, propagate in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.propagate = propagate


@contextlib.contextmanager
def own_output_captured() -> Iterator[list[str]]:
    """This process's fd 1 and 2 into a file; its text is appended to the yielded list."""
    found: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield found
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            found.append(sink.read().decode("utf-8", "replace"))


@dataclass
class Run:
    lines: list[Line] = field(default_factory=list)
    tokens: dict[str, bytes] = field(default_factory=dict)
    """Every callback token of the run, by execution id."""
    parked_token: bytes = b""
    cli_outputs: list[tuple[str, str]] = field(default_factory=list)
    shown_ids: list[str] = field(default_factory=list)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, source: str, text: str) -> None:
        for line in text.splitlines():
            self.lines.append(Line(source, "OUTPUT", line))


# The scenario.


SPEC_ENV = secret_env({"API_KEY": SECRET_API, "DB_PASSWORD": SECRET_DB}, {"MODE": "fast"})


async def start(
    client: Client, ledger: Ledger, queue: str, kind: Kind
) -> tuple[WorkflowHandle[Any, Any], str]:
    """A workflow awaiting an execution of ``kind``; returns it when the ledger has it."""
    workflow_id = f"secrets-{uuid.uuid4().hex}"
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        "AwaitAgentExecution" if kind is AGENT_EXECUTION else "AwaitWorkflowExecution",
        agent_execution(env=SPEC_ENV)
        if kind is AGENT_EXECUTION
        else workflow_execution(workflow_id="flow-1", env=SPEC_ENV),
        id=workflow_id,
        task_queue=queue,
    )
    assert handle.result_run_id is not None
    execution_id = execution_id_for(kind, workflow_id, handle.result_run_id, "1", 1)
    deadline = time.monotonic() + 20
    while True:
        try:
            await asyncio.to_thread(ledger.read, execution_id)
            return handle, execution_id
        except ExecutionNotFoundError:
            assert time.monotonic() < deadline, "the caller activity never recorded its execution"
            await asyncio.sleep(0.02)


async def finished(handle: WorkflowHandle[Any, Any]) -> str:
    try:
        await asyncio.wait_for(handle.result(), 30)
    except WorkflowFailureError:
        return "failed"
    return "completed"


async def run_cli(run: Run, url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs ``ledger <args>``; its stdout and stderr join the capture. Returns stdout."""
    process = await asyncio.create_subprocess_exec(
        LEDGER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LEDGER_URL": url, "COLUMNS": "200", **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    name = " ".join(a if len(a) < 40 else a[:8] + "…" for a in args)
    out, err = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    run.add(f"cli: {name} (stdout)", out)
    run.add(f"cli: {name} (stderr)", err)
    run.cli_outputs.append((name, out + err))
    assert process.returncode == 0, (name, err[-2000:])
    return out


def unreachable_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


async def scenario(run: Run, url: str, address: str, folder: Path) -> None:
    client = await Client.connect(address)
    ledger = open_ledger(url)
    queue = f"secrets-{uuid.uuid4().hex}"
    try:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[AwaitAgentExecution, AwaitWorkflowExecution],
            activities=ExecutionActivities(ledger).all(),
        ):
            await drive_everything(run, url, address, folder, client, ledger, queue)
    finally:
        ledger.close()


async def drive_everything(
    run: Run,
    url: str,
    address: str,
    folder: Path,
    client: Client,
    ledger: Ledger,
    queue: str,
) -> None:
    callers = [
        await start(client, ledger, queue, AGENT_EXECUTION),
        await start(client, ledger, queue, AGENT_EXECUTION),
        await start(client, ledger, queue, AGENT_EXECUTION),
        await start(client, ledger, queue, WORKFLOW_EXECUTION),
    ]
    (completed, completed_id), (failed, failed_id), (cancelled, cancelled_id) = callers[:3]
    workflow, workflow_id = callers[3]
    for _, execution_id in callers:
        token = bytes(ledger.get(execution_id).spec.callback_token)
        assert len(token) > 50, "the caller activity did not record its task token"
        run.tokens[execution_id] = token
    handmade = ledger.create(
        agent_execution(agent_id="agent-2", message="hand-made", token=HANDMADE_TOKEN, env=SPEC_ENV)
    ).id
    run.tokens[handmade] = HANDMADE_TOKEN

    # Status updates, then every kind of ending.
    for execution_id in (completed_id, failed_id, cancelled_id, handmade):
        patch = AgentExecutionStatus(
            phase=Phase.IN_PROGRESS,  # type: ignore[arg-type]
            messages=[AgentMessage(type=MESSAGE_AI, content="working")],
        )
        patch.tool_calls.add(id="call-1", name="search", status=2)
        await asyncio.to_thread(ledger.update_status, execution_id, patch, actor="runner")
    wpatch = WorkflowExecutionStatus(phase=Phase.IN_PROGRESS)  # type: ignore[arg-type]
    wpatch.tasks.append(WorkflowTask(task_id="t1", task_name="fetch"))
    await asyncio.to_thread(ledger.update_status, workflow_id, wpatch)
    await asyncio.to_thread(ledger.complete, completed_id, {"answer": 42})
    await asyncio.to_thread(
        ledger.fail, failed_id, "the tool crashed", error_type="ToolCrashed", details={"k": 1}
    )
    await asyncio.to_thread(ledger.cancel, cancelled_id, "the operator stopped it")
    await asyncio.to_thread(ledger.complete, workflow_id, {"rows": 3})
    await asyncio.to_thread(ledger.complete, handmade, {"n": 1})

    # The dispatcher wakes every caller (the hand-made token is refused by Temporal).
    dispatcher = Dispatcher(parse_url(url), client, poll_interval=0.05)
    try:
        stats = await dispatcher.run(until_caught_up=True)
    finally:
        await asyncio.to_thread(dispatcher.close)
    run.outcomes["dispatcher"] = dict(stats.outcomes)
    ends = await asyncio.gather(*(finished(h) for h in (completed, failed, cancelled, workflow)))
    assert ends == ["completed", "failed", "failed", "completed"], ends

    # Temporal unreachable: retried, then parked (info and warning logs).
    parked_handle, parked_id = await start(client, ledger, queue, AGENT_EXECUTION)
    run.parked_token = bytes(ledger.get(parked_id).spec.callback_token)
    run.tokens[parked_id] = run.parked_token
    await asyncio.to_thread(ledger.complete, parked_id, {"late": True})
    nowhere = await Client.connect(
        unreachable_address(),
        lazy=True,
        retry_config=RetryConfig(initial_interval_millis=20, max_interval_millis=50, max_retries=1),
    )
    down = Dispatcher(parse_url(url), nowhere, poll_interval=0.05, retry=FAST_RETRY)
    try:
        stats = await down.run(until_caught_up=True)
    finally:
        await asyncio.to_thread(down.close)
    run.outcomes["unreachable"] = dict(stats.outcomes)

    # `ledger dispatcher run` retries the parked delivery and wakes its caller.
    await run_cli(
        run, url, "dispatcher", "run", "--until-caught-up", env={"TEMPORAL_ADDRESS": address}
    )
    assert await finished(parked_handle) == "completed"

    # The CLI: an execution with a token and secrets, shown while running and when done.
    document = folder / "agent.yaml"
    document.write_text(
        "kind: AgentExecution\n"
        "spec:\n"
        "  agentId: agent-3\n"
        "  message: from the command line\n"
        f"  callbackToken: {base64.b64encode(CLI_TOKEN).decode()}\n"
        "  runtimeEnv:\n"
        f"    API_KEY: {{value: {SECRET_CLI}, isSecret: true}}\n"
        "    MODE: {value: fast}\n"
    )
    created = json.loads(await run_cli(run, url, "create", str(document), "--json"))
    cli_id = created["id"]
    run.tokens[cli_id] = CLI_TOKEN
    await run_cli(run, url, "status", cli_id, "--phase", "IN_PROGRESS")
    await show_everything(run, url, [cli_id, completed_id, failed_id, handmade])
    await run_cli(run, url, "complete", cli_id, "--output", '{"done": true}')
    await show_everything(run, url, [cli_id])


async def show_everything(run: Run, url: str, execution_ids: list[str]) -> None:
    run.shown_ids += execution_ids
    slots = asyncio.Semaphore(4)

    async def one(*args: str) -> None:
        async with slots:
            await run_cli(run, url, *args)

    await asyncio.gather(
        *(
            one(command, execution_id, *flag)
            for execution_id in execution_ids
            for command in ("show", "history")
            for flag in ((), ("--json",))
        )
    )


@pytest.fixture(scope="module")
def full_run(
    postgres_server: str, temporal_env: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    assert isinstance(temporal_env, WorkflowEnvironment)
    address = str(temporal_env.client.service_client.config.target_host)
    schema = "t_secrets_" + uuid.uuid4().hex[:10]
    url = f"{postgres_server}?schema={schema}"
    folder = tmp_path_factory.mktemp("secrets")
    run = Run()
    try:
        with all_logging_at_debug() as handler, own_output_captured() as own:
            asyncio.run(asyncio.wait_for(scenario(run, url, address, folder), SCENARIO_TIMEOUT))
        run.lines.extend(handler.lines)
        for text in own:
            run.add("fd", text)
        yield run
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# The searches.


def leaks(lines: list[Line], tokens: dict[str, bytes], secrets: list[str]) -> list[str]:
    """Where a whole token or secret value appears (never the value itself)."""
    found: list[str] = []
    needles: list[tuple[str, str]] = []
    for execution_id, token in tokens.items():
        needles += [
            (f"token of {execution_id} as {name}", f) for name, f in encodings(token).items()
        ]
    for index, secret in enumerate(secrets):
        needles += [
            (f"secret value #{index}", secret),
            (f"secret value #{index} as base64", base64.b64encode(secret.encode()).decode()),
        ]
    raw = [(f"token of {i}", t) for i, t in tokens.items()]
    raw += [(f"secret value #{n}", s.encode()) for n, s in enumerate(secrets)]
    for line in lines:
        for what, needle in needles:
            if needle in line.text:
                found.append(f"{line.source} [{line.level}] {line.where}: {what}")
        for decoded in embedded(line.text):
            found += [
                f"{line.source} [{line.level}] {line.where}: {w}, inside an encoded blob"
                for w, r in raw
                if r in decoded
            ]
    return sorted(set(found))


ENCODED_RUN = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}|(?:[0-9a-fA-F]{2}){12,}")


def embedded(text: str) -> Iterator[bytes]:
    """The bytes of every long base64 or hex run in ``text`` (a token inside a
    serialized message is not aligned with the message's base64)."""
    for run in ENCODED_RUN.findall(text):
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", run):
            yield bytes.fromhex(run)
        body = run.rstrip("=")
        padded = body + "=" * (-len(body) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError):
                yield decode(padded)


def from_temporal_sdk(line: Line) -> bool:
    return line.source.startswith("temporalio")


def test_the_search_finds_every_encoding() -> None:
    """The search itself: each encoding of a token, a token inside an encoded blob and a
    secret value are found; the redacted form is not a leak."""
    token = HANDMADE_TOKEN
    blob = b"prefix:" + token + b":suffix"
    texts = [f"x {form} y" for form in encodings(token).values()]
    texts += [
        f"state={base64.b64encode(blob).decode()}",
        f"state={base64.urlsafe_b64encode(blob).decode().rstrip('=')}",
        f"state={blob.hex()}",
        f"env API_KEY={SECRET_API}",
    ]
    for text in texts:
        assert leaks([Line("test", "DEBUG", text)], {"aex-x": token}, SECRETS), text
    harmless = f"callback for aex-x (token {redacted(token)}) after 3 tries"
    assert not leaks([Line("test", "INFO", harmless)], {"aex-x": token}, SECRETS)


def test_the_capture_is_real(full_run: Run) -> None:
    """The search below cannot pass by capturing nothing."""
    sources = {line.source.split(".")[0] for line in full_run.lines}
    for expected in ("projections", "temporalio", "psycopg"):
        assert expected in sources, sorted(sources)
    assert any(
        line.source.startswith("cli: dispatcher run") and line.text for line in full_run.lines
    )
    assert any(line.level == "DEBUG" for line in full_run.lines)
    assert full_run.outcomes["dispatcher"] == {"delivered": 4, "rejected": 1}, full_run.outcomes
    assert full_run.outcomes["unreachable"] == {"parked": 1}, full_run.outcomes
    assert len(full_run.tokens) == 7


def test_tokens_are_logged_redacted_where_they_are_logged(full_run: Run) -> None:
    """The parked delivery's retries and its parking name the token, redacted."""
    form = redacted(full_run.parked_token)
    by_source: dict[str, list[str]] = {}
    for line in full_run.lines:
        if form in line.text:
            by_source.setdefault(line.source.split(" (")[0], []).append(line.level)
    assert "INFO" in by_source.get("projections.dispatch.calls", []), by_source  # A retry.
    assert "WARNING" in by_source.get("projections.dispatch.in_flight", []), by_source  # Parked.
    retried = [t for name, t in full_run.cli_outputs if name.startswith("dispatcher run")]
    assert retried and "retrying 1 parked deliveries" in retried[0], retried


def test_cli_shows_tokens_and_secrets_redacted(full_run: Run) -> None:
    shown = [text for name, text in full_run.cli_outputs if name.startswith(("show", "history"))]
    assert len(shown) == 4 * len(full_run.shown_ids) == 20
    for execution_id in full_run.shown_ids:
        form = redacted(full_run.tokens[execution_id])
        as_json = form.replace("…", "\\u2026")  # json.dumps escapes the ellipsis.
        count = sum(form in text or as_json in text for text in shown)
        assert count >= 4, execution_id  # show and history, with and without --json.
    running = [
        text
        for name, text in full_run.cli_outputs
        # The text shows the phase as IN_PROGRESS, the JSON as EXECUTION_IN_PROGRESS.
        if name.startswith("show") and "agent-3" in text and "IN_PROGRESS" in text
    ]
    assert len(running) == 2 and all("***" in text for text in running), running


def test_no_token_or_secret_in_the_ledgers_logs_and_output(full_run: Run) -> None:
    """Ledger, projections, eventsourcing, psycopg, asyncio, the process's own output and
    every CLI command's output."""
    lines = [line for line in full_run.lines if not from_temporal_sdk(line)]
    assert len(lines) > 100
    found = leaks(lines, full_run.tokens, SECRETS)
    assert not found, "\n".join(found)


def test_no_token_or_secret_in_the_temporal_sdks_logs(full_run: Run) -> None:
    """The Temporal SDK's own loggers, at DEBUG, in a worker running the caller activity."""
    lines = [line for line in full_run.lines if from_temporal_sdk(line)]
    assert lines
    found = leaks(lines, full_run.tokens, SECRETS)
    assert not found, "\n".join(found)


# The demo: its own dev server, SQLite, and tokens this test never sees.

LONG_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{60,}={0,2}")
LONG_HEX = re.compile(r"\b[0-9a-fA-F]{80,}\b")
BYTES_REPR = re.compile(r"b'\\n|b\"\\n|\\x[0-9a-f]{2}.*\\x[0-9a-f]{2}")
REDACTED = re.compile(r"[A-Za-z0-9+/]{20}…\(\d+ bytes\)")


def test_demo_output_shows_tokens_only_redacted() -> None:
    import subprocess

    result = subprocess.run(
        [LEDGER, "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert len(REDACTED.findall(output)) >= 2, output
    assert not LONG_BASE64.search(output), LONG_BASE64.findall(output)
    assert not LONG_HEX.search(output)
    assert not BYTES_REPR.search(output)


def test_the_sdks_unknown_cancellation_warning_is_not_shown() -> None:
    """The SDK's worker warns, with the token's repr, when told to cancel an activity it
    no longer runs (an async one, after it went async): that warning is ignored once
    the caller side is imported; other warnings of the same module still show."""
    from ledger.temporal import log_redaction as redaction

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        redaction.install_temporal_log_redaction()
        for message in (
            f"Cannot find activity to cancel for token {HANDMADE_TOKEN!r}",
            "Activity task raised during worker shutdown",
        ):
            warnings.warn_explicit(
                message,
                UserWarning,
                filename="temporalio/worker/_activity.py",
                lineno=227,
                module=redaction.TEMPORAL_ACTIVITY_LOGGER,
            )
    assert [str(w.message) for w in shown] == ["Activity task raised during worker shutdown"]
