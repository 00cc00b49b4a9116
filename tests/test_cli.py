"""The ``ledger`` CLI through its real entry point, in subprocesses."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import cli

LEDGER = str(Path(sys.executable).parent / "ledger")
TOKEN = b"a-very-secret-temporal-task-token-that-must-never-be-printed-whole"
TOKEN_B64 = base64.b64encode(TOKEN).decode()


def run(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [LEDGER, *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(url: str, *args: str, stdin: str | None = None) -> str:
    result = run(url, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ok_json(url: str, *args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(url, *args, "--json", stdin=stdin))


def user_error(url: str, *args: str, stdin: str | None = None) -> str:
    """Runs a command that must fail as a user error: exit 1, one line, no traceback."""
    result = run(url, *args, stdin=stdin)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


AGENT_YAML = f"""
apiVersion: agentic.stigmer.ai/v1
kind: AgentExecution
metadata: {{name: demo, org: acme, labels: {{team: research}}}}
spec:
  agentId: agent-1
  message: hello
  callbackToken: {TOKEN_B64}
  runtimeEnv:
    API_KEY: {{value: sk-live-abcdef, isSecret: true}}
    MODE: {{value: fast}}
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "cli.db")


def create_agent(url: str, tmp_path: Path) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    created = ok_json(url, "create", str(path))
    assert created["phase"] == "EXECUTION_PENDING" and created["version"] == 1
    execution_id = created["id"]
    assert isinstance(execution_id, str) and execution_id.startswith("aex-")
    return execution_id


def test_lifecycle_and_redaction(url: str, tmp_path: Path) -> None:
    execution_id = create_agent(url, tmp_path)
    assert ok_json(url, "status", execution_id, "--phase", "in_progress")["version"] == 2
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"toolCalls": [{"id": "c1", "name": "search"}]}))
    assert ok_json(url, "status", execution_id, "--patch", str(patch))["version"] == 3
    done = ok_json(url, "complete", execution_id, "--output", '{"answer": 42}')
    assert done["phase"] == "EXECUTION_COMPLETED"

    shown = ok_json(url, "show", execution_id)
    spec = shown["resource"]["spec"]
    assert spec["callback_token"] == f"{TOKEN_B64[:20]}…({len(TOKEN)} bytes)"
    assert spec["runtime_env"]["API_KEY"]["value"] == "***"
    assert spec["runtime_env"]["MODE"]["value"] == "fast"
    assert shown["resource"]["status"]["tool_calls"][0]["name"] == "search"

    history = ok_json(url, "history", execution_id)
    assert [e["event"] for e in history] == [
        "Created",
        "StatusChanged",
        "StatusChanged",
        "Completed",
    ]
    assert history[-1]["output"] == {"answer": 42}

    for args in (("show", execution_id), ("history", execution_id)):
        for flag in ((), ("--json",)):
            printed = ok(url, *args, *flag)
            assert TOKEN_B64 not in printed and TOKEN.decode() not in printed
            assert "sk-live-abcdef" not in printed


def test_fail_and_cancel(url: str, tmp_path: Path) -> None:
    first = create_agent(url, tmp_path)
    failed = ok_json(
        url, "fail", first, "-m", "boom", "--type", "ToolError", "--details", '{"k": 1}'
    )
    assert failed["phase"] == "EXECUTION_FAILED"
    assert ok_json(url, "history", first)[-1]["error"] == {
        "type": "ToolError",
        "message": "boom",
        "details": {"k": 1},
    }
    second = create_agent(url, tmp_path)
    assert ok_json(url, "cancel", second, "--reason", "user")["phase"] == "EXECUTION_CANCELLED"


def test_create_from_stdin_and_idempotent(url: str) -> None:
    document = json.dumps(
        {
            "kind": "WorkflowExecution",
            "metadata": {"id": "wex-fixed1"},
            "spec": {"workflowId": "wf-1"},
        }
    )
    assert ok_json(url, "create", "-", stdin=document)["id"] == "wex-fixed1"
    assert ok_json(url, "create", "-", stdin=document)["version"] == 1
    changed = document.replace("wf-1", "wf-2")
    assert "different spec" in user_error(url, "create", "-", stdin=changed)


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("show", "aex-doesnotexist"), None, "does not exist"),
        (("show", "nope"), None, "must start with 'aex-' or 'wex-'"),
        (("create", "-"), "{not json", "neither JSON nor YAML"),
        (("create", "-"), "[1, 2]", "must be a JSON/YAML object"),
        (("create", "-"), '{"kind": "Banana"}', "unknown kind 'Banana'"),
        (("create", "-"), '{"kind": "AgentExecution", "spec": {"nope": 1}}', "does not match"),
        (("create", "-"), '{"kind": "AgentExecution", "spec": {"agentId": "a"}}', "spec.message"),
        (("create", "/does/not/exist.yaml"), None, "cannot read"),
        (("status", "aex-x"), None, "nothing to record"),
        (("complete", "aex-x", "--output", "[1]"), None, "must be a JSON object"),
    ],
)
def test_bad_input_is_one_clear_line(
    url: str, args: tuple[str, ...], stdin: str | None, expected: str
) -> None:
    assert run(url, "setup").returncode == 0  # A store that exists (reads create none).
    assert expected in user_error(url, *args, stdin=stdin)
    # A usage error (an option's value) exits 2: tests/test_trust.py::test_usage_errors_exit_2.


def test_illegal_transition_exit_code_and_nothing_written(url: str, tmp_path: Path) -> None:
    execution_id = create_agent(url, tmp_path)
    ok(url, "complete", execution_id)
    line = user_error(url, "fail", execution_id, "-m", "late")
    assert "EXECUTION_COMPLETED" in line
    assert len(ok_json(url, "history", execution_id)) == 2


def test_phase_backwards(url: str, tmp_path: Path) -> None:
    execution_id = create_agent(url, tmp_path)
    ok(url, "status", execution_id, "--phase", "IN_PROGRESS")
    assert "cannot go back" in user_error(url, "status", execution_id, "--phase", "PENDING")
    assert len(ok_json(url, "history", execution_id)) == 2


def test_usage_error_exit_code_2(url: str) -> None:
    assert run(url, "no-such-command").returncode == 2
    assert run(url, "fail", "aex-x").returncode == 2  # --message is required


def test_help_for_every_command(url: str) -> None:
    for args in (
        (),
        ("create",),
        ("status",),
        ("complete",),
        ("fail",),
        ("cancel",),
        ("show",),
        ("history",),
        ("list",),
        ("audit",),
        ("projections",),
        ("projections", "rebuild"),
        ("dispatcher",),
        ("dispatcher", "run"),
        ("demo",),
    ):
        # In-process (tests.support.cli): the help's text is tested here, not the process.
        result = cli.run([*args, "--help"], {**os.environ, "LEDGER_URL": url, "COLUMNS": "200"})
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout


def test_bad_url_is_a_user_error(tmp_path: Path) -> None:
    assert "unknown scheme" in user_error("mysql://x/y", "show", "aex-abc")


def test_keygen_prints_a_usable_key() -> None:
    key = ok("memory://", "keygen").strip()
    assert len(base64.b64decode(key)) == 32


@pytest.mark.parametrize("delay", [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
def test_ctrl_c_while_the_cli_starts_is_one_line(tmp_path: Path, delay: float) -> None:
    """A SIGINT while the CLI is still importing, or in a command before it installed
    its signal handlers (Typer's silent exit 130): no traceback, exit 130, one line.

    The promise starts where the ledger's code does (``ledger.__main__``): a signal
    while Python itself starts up is Python's. So the signal is sent ``delay`` after
    that module is imported (seen in ``PYTHONPROFILEIMPORTTIME``'s lines), whatever
    the machine's load."""
    process = subprocess.Popen(
        [LEDGER, "projections", "run"],
        env={
            **os.environ,
            "LEDGER_URL": "sqlite:///" + str(tmp_path / "ledger.db"),
            "COLUMNS": "200",
            "PYTHONPROFILEIMPORTTIME": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    early: list[str] = []
    for line in process.stderr:
        early.append(line)
        if line.rstrip().endswith("| ledger.__main__"):
            break
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    stdout, late = process.communicate(timeout=60)
    stderr = "".join(
        line
        for line in [*early, *late.splitlines(keepends=True)]
        if not line.startswith("import time:")
    )
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stdout == "", stdout
    lines = stderr.strip().splitlines()
    # Interrupted while importing (130), or already following and stopped cleanly (0).
    assert process.returncode in (130, 0), (process.returncode, stderr)
    if process.returncode == 130:
        assert lines and lines[-1] == "interrupted", stderr
    else:
        # It got as far as following: its banner, then its clean stop, and nothing else.
        assert len(lines) == 2, stderr
        assert lines[0].startswith("following status, audit"), stderr
        assert lines[0].endswith("Ctrl-C to stop"), stderr
        assert lines[1] == "stopped", stderr


def unused_port() -> int:
    """A localhost TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (("projections", "run"), "following status, audit"),
        (("dispatcher", "run"), "not reachable"),
    ],
    ids=["projections", "dispatcher"],
)
def test_run_commands_log_json_lines(tmp_path: Path, args: tuple[str, ...], first: str) -> None:
    """Both long-running commands log one JSON object a line with --log-format json:
    time, level, logger, message. The dispatcher, with no Temporal to reach, says
    that it waits for it; each is stopped by SIGTERM after its first line."""
    env = {
        **os.environ,
        "LEDGER_URL": "sqlite:///" + str(tmp_path / "ledger.db"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{unused_port()}",
    }
    process = subprocess.Popen(
        [LEDGER, *args, "--log-format", "json", "--log-level", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_stderr() -> None:
        assert process.stderr is not None
        for entry in process.stderr:
            lines.put(entry)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        logged = [lines.get(timeout=60)]  # Generous deadlines: the machine may be busy.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stdout is not None
    assert process.stdout.read() == ""
    while not lines.empty():
        logged.append(lines.get_nowait())
    records = [json.loads(entry) for entry in logged]
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message"}, record
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert first in records[0]["message"], records[0]
    if args[0] == "projections":  # Its own SIGTERM handler: a clean stop, logged.
        assert process.returncode == 0
        assert records[-1]["message"] == "stopped", records[-1]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_run_commands_logs_never_hold_a_whole_token(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one logging set-up redacts a token logged as an argument, in either format."""
    import logging

    from ledger.cli._logging import LogFormat, LogLevel, configure_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(LogLevel.DEBUG, LogFormat(log_format))
        logging.getLogger("projections.dispatch.calls").info("callback (token %s)", TOKEN)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert "callback (token " in logged
    assert TOKEN_B64 not in logged and TOKEN.decode() not in logged, logged
    if log_format == "json":
        assert json.loads(logged)["logger"] == "projections.dispatch.calls"
