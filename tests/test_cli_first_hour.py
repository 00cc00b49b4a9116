"""Issue 13, the first hour of a new operator: the example files, every spelling of
a phase, idempotent re-runs that say so, tables that fit 80 columns in a pipe, JSON
on every read command, ``--version``, ``watch`` and ``tail``, and commands that wait
having deadlines. Through the real ``ledger`` entry point: in subprocesses, except
the commands that only read and print (``list``, ``show``, ``audit`` ...), which call
it in-process (:mod:`tests.support.cli`: their output is what is tested here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import cli

LEDGER = str(Path(sys.executable).parent / "ledger")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
AGENT_ID = "aex-example-q3-summary"
WORKFLOW_ID = "wex-example-onboarding"


def run(
    url: str,
    *args: str,
    columns: int = 80,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "LEDGER_URL": url, "COLUMNS": str(columns), **(env or {})}
    return cli.run(args, environment, stdin=stdin, timeout=120)


def ok(url: str, *args: str, **kwargs: Any) -> str:
    result = run(url, *args, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def ok_json(url: str, *args: str, **kwargs: Any) -> Any:
    return json.loads(ok(url, *args, "--json", **kwargs))


def example(name: str) -> str:
    return str(EXAMPLES / name)


def run_the_examples(url: str) -> None:
    """The README's walkthrough, from the example files."""
    ok(url, "create", example("agent-execution.yaml"))
    ok(url, "create", example("workflow-execution.yaml"))
    ok(url, "status", AGENT_ID, "--patch", example("agent-progress.yaml"))
    ok(url, "status", AGENT_ID, "--patch", example("agent-tool-done.yaml"))
    ok(url, "status", WORKFLOW_ID, "--patch", example("workflow-progress.yaml"))
    ok(url, "complete", AGENT_ID, "--output", "@" + example("output.json"))
    ok(
        url,
        "fail",
        WORKFLOW_ID,
        "-m",
        "directory refused",
        "--type",
        "AccountCreationFailed",
        "--details",
        "@" + example("error-details.json"),
    )


USED_EXAMPLES = {
    "agent-execution.yaml",
    "workflow-execution.yaml",
    "agent-progress.yaml",
    "agent-tool-done.yaml",
    "workflow-progress.yaml",
    "output.json",
    "error-details.json",
}


def test_every_example_file_is_used_and_does_what_it_says(sqlite_url: str) -> None:
    assert {p.name for p in EXAMPLES.iterdir()} == USED_EXAMPLES
    readme = (EXAMPLES.parent / "README.md").read_text()
    walkthrough = readme[readme.index("## Try it by hand") : readme.index("## Python API")]
    assert set(re.findall(r"examples/([\w.-]+)", walkthrough)) == USED_EXAMPLES
    run_the_examples(sqlite_url)

    agent = ok_json(sqlite_url, "show", AGENT_ID)
    status = agent["resource"]["status"]
    assert status["phase"] == "EXECUTION_COMPLETED"
    assert [m["type"] for m in status["messages"]] == ["MESSAGE_HUMAN", "MESSAGE_AI"]
    (call,) = status["tool_calls"]  # The second patch merged into call-1 by its id.
    assert call["status"] == "TOOL_CALL_COMPLETED" and call["name"] == "search"
    assert call["result"] == "3 documents found" and call["args"] == {"query": "Q3 report"}
    assert status["todos"]["read"]["status"] == "TODO_COMPLETED"
    assert status["todos"]["summarise"]["status"] == "TODO_PENDING"
    assert agent["ending"]["output"] == {"summary": "Revenue grew 12% in Q3.", "sources": 3}
    assert agent["resource"]["metadata"]["labels"] == {"team": "research"}

    workflow = ok_json(sqlite_url, "show", WORKFLOW_ID)
    spec = workflow["resource"]["spec"]
    assert spec["runtime_env"]["DIRECTORY_API_KEY"]["value"] == "***"
    assert spec["runtime_env"]["DIRECTORY_URL"]["value"] == "https://directory.example.com"
    assert spec["callback_token"].startswith("CiQ5ZTM2YmM2Ny1mNzY4")
    assert spec["callback_token"].endswith("(38 bytes)")
    tasks = workflow["resource"]["status"]["tasks"]
    assert [(t["task_id"], t["task_type"], t["status"]) for t in tasks] == [
        ("t1", "WORKFLOW_TASK_API_CALL", "WORKFLOW_TASK_IN_PROGRESS"),
        ("t2", "WORKFLOW_TASK_APPROVAL", "WORKFLOW_TASK_PENDING"),
    ]
    error = workflow["ending"]["error"]
    assert error == {
        "type": "AccountCreationFailed",
        "message": "directory refused",
        "details": {"task_id": "t1", "service": "directory", "status": 503},
    }
    # The whole token never appears, in any output.
    for command in (["show", WORKFLOW_ID], ["history", WORKFLOW_ID, "--wide"]):
        assert "CiQ5ZTM2YmM2Ny1mNzY4LTQ2ZTktYTQ3OS0xMDc1YjgxNWNmZTg" not in ok(sqlite_url, *command)


@pytest.mark.parametrize("spelling", ["IN_PROGRESS", "in_progress", "EXECUTION_IN_PROGRESS", "2"])
def test_a_phase_in_every_spelling_in_files_and_flags(sqlite_url: str, spelling: str) -> None:
    file_id, flag_id = f"aex-file-{spelling.lower()}", f"aex-flag-{spelling.lower()}"
    for execution_id in (file_id, flag_id):
        document = json.dumps(
            {
                "kind": "AgentExecution",
                "metadata": {"id": execution_id},
                "spec": {"agent_id": "a", "message": "m"},
            }
        )
        ok(sqlite_url, "create", "-", stdin=document)
    patch = f"phase: {spelling}\ntool_calls:\n- id: c1\n  status: running\n"
    by_file = ok_json(sqlite_url, "status", file_id, "--patch", "-", stdin=patch)
    by_flag = ok_json(sqlite_url, "status", flag_id, "--phase", spelling)
    for record in (by_file, by_flag):
        assert record["phase"] == "EXECUTION_IN_PROGRESS" and record["written"] is True
    tool_call = ok_json(sqlite_url, "show", file_id)["resource"]["status"]["tool_calls"][0]
    assert tool_call["status"] == "TOOL_CALL_RUNNING"


def test_enum_errors_list_the_valid_values(sqlite_url: str) -> None:
    ok(sqlite_url, "create", example("agent-execution.yaml"))
    bad_file = run(sqlite_url, "status", AGENT_ID, "--patch", "-", stdin="phase: RUNNING\n")
    assert bad_file.returncode == 1
    assert bad_file.stderr == (
        "error: the status patch: phase: unknown value 'RUNNING': expected one of "
        "PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED\n"
    )
    nested = "tool_calls:\n- id: c1\n  status: DONE\n"
    bad_nested = run(sqlite_url, "status", AGENT_ID, "--patch", "-", stdin=nested)
    assert bad_nested.returncode == 1
    assert "tool_calls[0].status: unknown value 'DONE'" in bad_nested.stderr
    assert "expected one of PENDING, RUNNING, COMPLETED, FAILED" in bad_nested.stderr
    bad_flag = run(sqlite_url, "status", AGENT_ID, "--phase", "RUNNING")
    assert bad_flag.returncode == 2 and "expected one of PENDING, IN_PROGRESS" in bad_flag.stderr
    # Nothing refused was written.
    assert len(ok_json(sqlite_url, "history", AGENT_ID)) == 1


def test_re_runs_are_idempotent_and_say_so(sqlite_url: str) -> None:
    first = ok(sqlite_url, "create", example("agent-execution.yaml"))
    assert first == f"created {AGENT_ID}: PENDING (version 1)\n"
    again = ok(sqlite_url, "create", example("agent-execution.yaml"))
    assert again == (
        f"{AGENT_ID}: already exists, identical, nothing written (PENDING, version 1)\n"
    )
    assert ok_json(sqlite_url, "create", example("agent-execution.yaml"))["written"] is False

    progress = ok_json(sqlite_url, "status", AGENT_ID, "--phase", "IN_PROGRESS")
    assert (progress["version"], progress["written"]) == (2, True)
    same = ok(sqlite_url, "status", AGENT_ID, "--phase", "in_progress")
    assert same == f"{AGENT_ID}: unchanged, nothing written (IN_PROGRESS, version 2)\n"
    # A patch of values it already has changes nothing either; a new message does.
    ok(sqlite_url, "status", AGENT_ID, "--patch", example("agent-tool-done.yaml"))
    version = len(ok_json(sqlite_url, "history", AGENT_ID))
    resent = ok_json(sqlite_url, "status", AGENT_ID, "--patch", example("agent-tool-done.yaml"))
    assert (resent["version"], resent["written"]) == (version, False)
    message = "messages:\n- type: AI\n  content: hello\n"
    assert ok_json(sqlite_url, "status", AGENT_ID, "--patch", "-", stdin=message)["written"]
    history = ok_json(sqlite_url, "history", AGENT_ID)
    assert [e["event"] for e in history] == ["Created", *["StatusChanged"] * 3]


def _check_fits(text: str, width: int = 80, name: str = "") -> None:
    lines = text.splitlines()
    assert lines, f"{name}: nothing printed"
    for line in lines:
        assert len(line) <= width, f"{name}: {len(line)} columns: {line!r}"


def test_every_listing_fits_80_columns_in_a_pipe(sqlite_url: str) -> None:
    run_the_examples(sqlite_url)
    # Long generated ids beside the examples' short ones.
    generated = ok_json(
        sqlite_url,
        "create",
        "-",
        stdin='{"kind": "WorkflowExecution", "spec": {"workflow_id": "wf-a-rather-long-name", '
        '"callback_token": "dG9rZW4="}}',
    )["id"]
    ok(sqlite_url, "status", generated, "--phase", "IN_PROGRESS")
    ok(sqlite_url, "cancel", generated, "--reason", "no longer needed")
    listings = {
        "list": ok(sqlite_url, "list"),
        "audit one": ok(sqlite_url, "audit", AGENT_ID),
        "audit pending": ok(sqlite_url, "audit", "--pending"),
        "history": ok(sqlite_url, "history", AGENT_ID),
        "projections": ok(sqlite_url, "projections", "status"),
    }
    for name, text in listings.items():
        _check_fits(text, name=name)
    listing = listings["list"]
    for execution_id in (AGENT_ID, WORKFLOW_ID, generated):
        assert re.search(rf"(^|\s){execution_id}(\s|$)", listing, re.M), listing
    # Phases whole and without their prefix; times to the second, no microseconds.
    assert re.search(r"\bCOMPLETED\b", listing) and re.search(r"\bCANCELLED\b", listing)
    assert "EXECUTION_" not in listing and "+00:00" not in listing
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", listing)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", listing)
    # The example without a token has no callback; the one with a token is pending.
    assert "no callback" in listings["audit one"]
    pending = listings["audit pending"]
    assert WORKFLOW_ID in pending and generated in pending and AGENT_ID not in pending
    # --wide shows every column, wider than 80 when it must be.
    wide = ok(sqlite_url, "list", "--wide")
    assert "completed" in wide.splitlines()[0] and "kind" in wide.splitlines()[0]
    # --utc: times marked Z.
    assert re.search(r"\d\d:\d\d:\d\dZ", ok(sqlite_url, "list", "--utc"))


def test_show_tells_the_ending_in_sections(sqlite_url: str) -> None:
    run_the_examples(sqlite_url)
    ok(sqlite_url, "create", "-", stdin=_agent("aex-cancelled"))
    ok(sqlite_url, "cancel", "aex-cancelled", "--reason", "the user changed their mind")
    agent, workflow, cancelled = (
        ok(sqlite_url, "show", AGENT_ID),
        ok(sqlite_url, "show", WORKFLOW_ID),
        ok(sqlite_url, "show", "aex-cancelled"),
    )
    assert agent.splitlines()[0].split() == [
        AGENT_ID,
        "AgentExecution",
        "COMPLETED",
        "version",
        "4",
    ]
    for section in ("metadata", "spec", "status", "recorded", "ending"):
        assert re.search(rf"^{section}$", agent, re.M), (section, agent)
    assert "summary: Revenue grew 12% in Q3." in agent
    assert "type: AccountCreationFailed" in workflow and "message: directory refused" in workflow
    assert "service: directory" in workflow and "value: '***'" in workflow
    assert "reason: the user changed their mind" in cancelled
    # The callback's story: none without a token; pending until a dispatcher calls.
    assert re.search(r"^callback$", workflow, re.M) and "outcome: pending" in workflow
    assert "no callback" in agent
    story = ok_json(sqlite_url, "show", WORKFLOW_ID)["callback"]
    assert (story["outcome"], story["attempts"], story["delivered_at"]) == ("pending", 0, None)
    assert ok_json(sqlite_url, "show", AGENT_ID)["callback"] is None
    assert "EXECUTION_" not in agent + workflow and "status: RUNNING" not in agent
    _check_fits(agent + workflow, 100)


def _agent(execution_id: str, token: str = "") -> str:
    spec: dict[str, str] = {"agent_id": "a", "message": "m"}
    if token:
        spec["callback_token"] = token
    return json.dumps({"kind": "AgentExecution", "metadata": {"id": execution_id}, "spec": spec})


def test_json_on_every_read_command_and_version(sqlite_url: str) -> None:
    run_the_examples(sqlite_url)
    assert isinstance(ok_json(sqlite_url, "show", AGENT_ID)["resource"], dict)
    assert len(ok_json(sqlite_url, "history", AGENT_ID)) == 4
    assert {e["id"] for e in ok_json(sqlite_url, "list")["executions"]} == {AGENT_ID, WORKFLOW_ID}
    story = ok_json(sqlite_url, "audit", AGENT_ID)
    assert story["outcome"] == "no_callback" and story["delivered_at"] is None
    page = ok_json(sqlite_url, "audit", "--pending", "--limit", "1")
    assert [r["execution_id"] for r in page["pending"]] == [WORKFLOW_ID] and page["next"] is None
    assert {p["name"] for p in ok_json(sqlite_url, "projections", "status")}
    assert ok_json(sqlite_url, "keys", "list") == []
    assert len(ok_json(sqlite_url, "keygen")["key"]) == 44
    assert ok_json(sqlite_url, "setup")["set_up"] is True
    tail = ok(sqlite_url, "tail", "-n", "3", "--json").splitlines()
    assert [json.loads(line)["position"] for line in tail] == [5, 6, 7]
    watched = [
        json.loads(line) for line in ok(sqlite_url, "watch", AGENT_ID, "--json").splitlines()
    ]
    assert [e["version"] for e in watched] == [1, 2, 3, 4]
    assert watched[-1]["phase"] == "EXECUTION_COMPLETED"
    version = ok(sqlite_url, "--version")
    assert re.fullmatch(r"ledger \(execution-ledger\) \d+\.\d+\.\d+\S*\n", version)


def test_watch_follows_an_execution_until_it_ends(sqlite_url: str) -> None:
    ok(sqlite_url, "create", "-", stdin=_agent("aex-watched"))
    watcher = subprocess.Popen(
        [LEDGER, "watch", "aex-watched", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEDGER_URL": sqlite_url, "COLUMNS": "80"},
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert "aex-watched" in first and "Created" in first and "PENDING" in first
        assert watcher.poll() is None  # Still following an open execution.
        ok(sqlite_url, "status", "aex-watched", "--phase", "IN_PROGRESS")
        assert "StatusChanged" in watcher.stdout.readline()
        ok(sqlite_url, "complete", "aex-watched", "--output", '{"answer": 42}')
        rest, errors = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 0, errors
    assert "Completed" in rest and "COMPLETED" in rest and '"answer": 42' in rest
    # On an open execution, --timeout ends it: exit 1, one line.
    ok(sqlite_url, "create", "-", stdin=_agent("aex-open"))
    late = run(sqlite_url, "watch", "aex-open", "--timeout", "0.5")
    assert late.returncode == 1
    assert late.stderr == "error: execution 'aex-open' is still PENDING after 0.5 s\n"


def test_tail_follows_the_log(sqlite_url: str) -> None:
    ok(sqlite_url, "create", "-", stdin=_agent("aex-tail-1"))
    tail = subprocess.Popen(
        [LEDGER, "tail", "--follow", "--json", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEDGER_URL": sqlite_url},
    )
    try:
        assert tail.stdout is not None
        assert json.loads(tail.stdout.readline())["execution_id"] == "aex-tail-1"
        ok(sqlite_url, "create", "-", stdin=_agent("aex-tail-2"))
        line = json.loads(tail.stdout.readline())
        assert (line["execution_id"], line["event"], line["position"]) == (
            "aex-tail-2",
            "Created",
            2,
        )
    finally:
        tail.kill()
        tail.communicate()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_commands_that_wait_on_temporal_have_deadlines(sqlite_url: str) -> None:
    nowhere = {"TEMPORAL_ADDRESS": _closed_port()}
    ok(sqlite_url, "create", "-", stdin=_agent("aex-done", token="dG9rZW4="))
    ok(sqlite_url, "complete", "aex-done")
    # Nothing parked: nothing to call, so Temporal (down here) is never contacted.
    nothing = run(sqlite_url, "dispatcher", "retry-parked", "--timeout", "60", env=nowhere)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout == "nothing parked: no delivery to retry\n"
    assert "not reachable" not in nothing.stderr
    # A run until caught up gives up at its deadline: one error line, exit 1.
    late = run(sqlite_url, "dispatcher", "run", "--until-caught-up", "--timeout", "1", env=nowhere)
    assert late.returncode == 1
    last = late.stderr.strip().splitlines()[-1]
    assert last.startswith("error: not caught up within 1 s (is Temporal reachable at 127.0.0.1:")
    assert "Traceback" not in late.stderr
    # The delivery is still to be made: nothing was recorded for it.
    assert ok_json(sqlite_url, "audit", "aex-done")["outcome"] == "pending"
    # --timeout only bounds a run that ends by itself.
    usage = run(sqlite_url, "dispatcher", "run", "--timeout", "1", env=nowhere)
    assert usage.returncode == 2 and usage.stderr.startswith("error: --timeout is for")


def test_demo_keep_leaves_a_ledger_to_explore() -> None:
    result = subprocess.run(
        [LEDGER, "demo", "--keep", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    url = summary["url"]
    folder = Path(url.removeprefix("sqlite:///")).parent
    try:
        assert summary["ok"] is True and summary["kept"] is True
        assert summary["outcomes"] == {"delivered": 2}
        assert [s["outcome"] for s in summary["audit"]] == ["delivered", "delivered"]
        listed = {e["id"] for e in ok_json(url, "list")["executions"]}
        assert listed == set(summary["executions"])
        shown = ok(url, "show", summary["executions"][0])
        assert "outcome: delivered" in shown and re.search(r"latency: \d+(\.\d)? m?s", shown)
        assert (folder / "ledger.db").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
