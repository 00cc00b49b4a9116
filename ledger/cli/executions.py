"""Commands on executions: create, status, complete, fail, cancel (writes through
the Ledger API); show and history (read from the ledger); list and audit (read
from the status and audit views, caught up first).

Secrets never appear: a callback token shows as the first 20 characters of its
base64 and its length; ``is_secret`` runtime_env values show as ``***``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from ledger.cli._app import (
    ActorOption,
    JsonOption,
    UrlOption,
    VersionOption,
    app,
    errors,
    fail,
    open_ledger,
    open_views,
)
from ledger.cli._input import (
    InputError,
    UsageError,
    iso_datetime,
    json_object,
    parse_into,
    phase,
    read_document,
    resource_from,
)
from ledger.cli._render import event_summary, out, print_json, print_record, rows, table
from ledger.contract.ids import kind_of_id
from ledger.contract.kinds import kind_named
from ledger.contract.phases import Phase
from ledger.domain.execution import Execution
from ledger.domain.redaction import display_dict

# Writes.


@app.command()
def create(
    path: Annotated[str, typer.Argument(help="JSON or YAML resource file, or - for stdin.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
) -> None:
    """Record a new execution from a resource (the proto's JSON form, JSON or YAML)."""
    with errors():
        resource = resource_from(read_document(path))
    with open_ledger(url) as ledger:
        record = ledger.create(resource, actor=actor)
    print_record(record, as_json, "created")


@app.command()
def status(
    execution_id: Annotated[str, typer.Argument(help="Execution id (aex-... or wex-...).")],
    phase_name: Annotated[
        str | None,
        typer.Option("--phase", help="New phase: PENDING, IN_PROGRESS, COMPLETED, ..."),
    ] = None,
    patch: Annotated[
        str | None, typer.Option("--patch", help="Status patch file (JSON or YAML), or -.")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
    expected_version: VersionOption = None,
) -> None:
    """Record a status update: a phase and/or a status patch."""
    with errors():
        kind = kind_of_id(execution_id)
        message: Any = kind.status_class()
        if patch is not None:
            message = parse_into(message, read_document(patch), "the status patch")
        if phase_name is not None:
            message.phase = phase(phase_name)
        if not message.ByteSize():
            raise InputError("nothing to record: give --phase and/or --patch")
    with open_ledger(url) as ledger:
        record = ledger.update_status(
            execution_id, message, expected_version=expected_version, actor=actor
        )
    print_record(record, as_json, "updated")


@app.command()
def complete(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    output: Annotated[
        str | None, typer.Option(help="Output: a JSON object, or @file (JSON/YAML).")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
    expected_version: VersionOption = None,
) -> None:
    """End an execution in COMPLETED."""
    with errors():
        output_value = json_object(output, "--output")
    with open_ledger(url) as ledger:
        record = ledger.complete(
            execution_id, output_value, expected_version=expected_version, actor=actor
        )
    print_record(record, as_json, "completed")


@app.command("fail")
def fail_(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What went wrong.")],
    error_type: Annotated[str, typer.Option("--type", help="Error type.")] = "ExecutionFailed",
    details: Annotated[
        str | None, typer.Option(help="Details: a JSON object, or @file (JSON/YAML).")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
    expected_version: VersionOption = None,
) -> None:
    """End an execution in FAILED with a structured error."""
    with errors():
        details_value = json_object(details, "--details")
    with open_ledger(url) as ledger:
        record = ledger.fail(
            execution_id,
            message,
            error_type=error_type,
            details=details_value,
            expected_version=expected_version,
            actor=actor,
        )
    print_record(record, as_json, "failed")


@app.command()
def cancel(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    reason: Annotated[str, typer.Option(help="Why it was cancelled.")] = "",
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
    expected_version: VersionOption = None,
) -> None:
    """End an execution in CANCELLED."""
    with open_ledger(url) as ledger:
        record = ledger.cancel(execution_id, reason, expected_version=expected_version, actor=actor)
    print_record(record, as_json, "cancelled")


# Reads from the ledger.


@app.command()
def show(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an execution: metadata, spec (secrets redacted), status and audit, and how
    it ended (the output, the error's type, message and details, or the cancel reason)."""
    with open_ledger(url, read_only=True) as ledger:
        record = ledger.read(execution_id)
        last = ledger.history(execution_id)[-1].event if record.phase.is_terminal else None
    shown = display_dict(record.resource)
    ending = _ending(last)
    if as_json:
        print_json({"version": record.version, "resource": shown, "ending": ending})
    else:
        out.print(f"[bold]{record.id}[/]  {record.phase.proto_name}  version {record.version}")
        out.print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), highlight=False)
        if ending is not None:
            out.print(
                yaml.safe_dump({"ending": ending}, sort_keys=False, allow_unicode=True),
                highlight=False,
            )


def _ending(event: object) -> dict[str, Any] | None:
    """How a terminal execution ended, from its ``Completed`` event."""
    if not isinstance(event, Execution.Completed):
        return None
    ending: dict[str, Any] = {"phase": Phase(event.phase).name}
    if event.output is not None:
        ending["output"] = event.output
    if event.error is not None:
        ending["error"] = dict(event.error)
    if event.reason:
        ending["reason"] = event.reason
    return ending


@app.command()
def history(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every event of one execution, in order."""
    with open_ledger(url, read_only=True) as ledger:
        entries = ledger.history(execution_id)
    events = [
        {
            "version": e.version,
            "recorded_at": e.recorded_at.isoformat(),
            "event": e.type,
            "phase": e.phase.proto_name,
            "actor": getattr(e.event, "actor", ""),
            **event_summary(e),
        }
        for e in entries
    ]
    if as_json:
        print_json(events)
        return
    shown = Table(title=f"history of {execution_id}")
    for column in ("version", "recorded at", "event", "phase", "actor", "details"):
        shown.add_column(column)
    for row in events:
        details = {
            k: v
            for k, v in row.items()
            if k not in ("version", "recorded_at", "event", "phase", "actor")
        }
        shown.add_row(
            str(row["version"]),
            row["recorded_at"],
            row["event"],
            row["phase"],
            row["actor"],
            json.dumps(details, ensure_ascii=False) if details else "",
        )
    out.print(shown)


# Reads from the views.


@app.command("list")
def list_(
    kind: Annotated[str | None, typer.Option(help="AgentExecution or WorkflowExecution.")] = None,
    phase_name: Annotated[
        str | None, typer.Option("--phase", help="Phase, e.g. IN_PROGRESS.")
    ] = None,
    org: Annotated[str | None, typer.Option(help="Organisation.")] = None,
    label: Annotated[str | None, typer.Option(help="A label, key=value.")] = None,
    since: Annotated[str | None, typer.Option(help="Created at or after (ISO-8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Created before (ISO-8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 50,
    after: Annotated[str | None, typer.Option(help="Cursor from the previous page.")] = None,
    cancel_requested: Annotated[
        bool, typer.Option("--cancel-requested", help="Only those whose caller asked to cancel.")
    ] = False,
    caller_gone: Annotated[
        bool, typer.Option("--caller-gone", help="Only those whose caller is gone.")
    ] = False,
    include_deleted: Annotated[
        bool, typer.Option("--include-deleted", help="Deleted executions too.")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List executions from the status view, newest first (keyset pagination)."""
    with errors():
        if kind is not None:
            kind_named(kind)
        phase_proto = Phase(phase(phase_name)).proto_name if phase_name is not None else None
        label_pair: tuple[str, str] | None = None
        if label is not None:
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise InputError("--label must be key=value")
            label_pair = (key, value)
        since_at, until_at = iso_datetime(since, "--since"), iso_datetime(until, "--until")
    with open_views(url) as views:
        views.catch_up(["status"])
        found, cursor = views.status.list(
            kind=kind,
            phase=phase_proto,
            org=org,
            label=label_pair,
            since=since_at,
            until=until_at,
            limit=limit,
            after=after,
            cancel_requested=cancel_requested,
            caller_gone=caller_gone,
            include_deleted=include_deleted,
        )
    shown = rows(found)
    if as_json:
        print_json({"executions": shown, "next": cursor})
        return
    out.print(
        table(
            "executions",
            shown,
            ["id", "kind", "phase", "agent_id", "workflow_id", "org", "created_at", "completed_at"],
        )
    )
    if cursor:
        out.print(f"more: --after {cursor}")


AUDIT_COLUMNS = [
    "execution_id",
    "kind",
    "phase",
    "completed_at",
    "outcome",
    "attempts",
    "delivered_at",
    "latency_ms",
]


@app.command()
def audit(
    execution_id: Annotated[str | None, typer.Argument(help="Execution id.")] = None,
    pending: Annotated[
        bool, typer.Option("--pending", help="Every callback still pending or parked.")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The completion audit: one execution's callback story, or every pending one."""
    if (execution_id is None) == (not pending):
        with errors():
            raise UsageError("give an execution id or --pending (not both)")
    with open_views(url) as views:
        views.catch_up(["audit"])
        if pending:
            shown = rows(_every_pending(views))
            if as_json:
                print_json(shown)
            else:
                out.print(table("callbacks pending or parked", shown, AUDIT_COLUMNS))
            return
        assert execution_id is not None
        with errors():
            kind_of_id(execution_id)
        row = views.audit.get(execution_id)
        if row is None:
            with errors():
                phase_now = views.ledger.read(execution_id).phase  # Unknown: does not exist.
            fail(
                f"execution {execution_id!r} is {phase_now.name}: its callback story starts "
                "when it completes"
            )
    shown = rows([row])
    if as_json:
        print_json(shown[0])
    else:
        out.print(table(f"audit of {execution_id}", shown, AUDIT_COLUMNS))


def _every_pending(views: Any, page: int = 1000) -> list[Any]:
    """Every pending or parked callback, page after page."""
    found: list[Any] = []
    while True:
        batch = views.audit.pending(page, found[-1] if found else None)
        found += batch
        if len(batch) < page:
            return found
