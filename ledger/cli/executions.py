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
    store_config,
)
from ledger.cli._audit import audit_columns, audit_dict, pending_page
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
from ledger.cli._render import event_summary, out, print_json, print_record, print_table, rows
from ledger.cli._resource import execution_rows, list_columns, print_resource
from ledger.cli._tables import Column, UtcOption, WideOption, fit, phase_name, timer
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
    print_record(record, as_json, "created", unchanged="already exists, identical")


@app.command()
def status(
    execution_id: Annotated[str, typer.Argument(help="Execution id (aex-... or wex-...).")],
    phase_name: Annotated[
        str | None,
        typer.Option(
            "--phase",
            metavar="PHASE",
            help="New phase: PENDING, IN_PROGRESS, COMPLETED, ... (any case, or the number).",
        ),
    ] = None,
    patch: Annotated[
        str | None,
        typer.Option("--patch", metavar="FILE", help="Status patch file (JSON or YAML), or -."),
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
    print_record(record, as_json, "updated", unchanged="unchanged")


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
    utc: UtcOption = False,
) -> None:
    """Show an execution: metadata, spec (secrets redacted), status, and how it ended
    (the output, the error's type, message and details, or the cancel reason)."""
    with open_ledger(url, read_only=True) as ledger:
        record = ledger.read(execution_id)
        last = ledger.history(execution_id)[-1].event if record.phase.is_terminal else None
    shown = display_dict(record.resource)
    ending = _ending(last)
    story = _callback_story(url, record)
    if as_json:
        print_json(
            {"version": record.version, "resource": shown, "ending": ending, "callback": story}
        )
        return
    print_resource(record, shown, ending, utc, story)


def _callback_story(url: str | None, record: Any) -> dict[str, Any] | None:
    """What became of the callback of an ended execution with a token, from the audit
    view (caught up first, as ``ledger audit`` does); None for an open execution or
    one without a token, or when the views cannot be read here (e.g. a read-only role:
    ``ledger audit ID`` tells the story then)."""
    if not (record.phase.is_terminal and record.resource.spec.callback_token):
        return None
    from projections.views import Views

    try:
        config = store_config(url)
        if config.scheme == "memory":
            return None
        with Views(config) as views:
            views.catch_up(["audit"])
            row = views.audit.get(record.id)
    except Exception:  # The story is an extra: show tells the rest anyway.
        return None
    return audit_dict(row) if row is not None else None


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
    wide: WideOption = False,
    utc: UtcOption = False,
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
    for row in events:
        details = {k: v for k, v in row.items() if k not in _HISTORY_KEYS}
        row["details"] = json.dumps(details, ensure_ascii=False) if details else ""
    columns = [
        Column("version", "version", 0),
        Column("recorded_at", "recorded", 1, timer(utc)),
        Column("event", "event", 0),
        Column("phase", "phase", 0, phase_name),
        Column("actor", "actor", 3),
        Column("details", "details", 2, flexible=True),
    ]
    print_table(*fit(f"history of {execution_id}", events, columns, width=out.width, wide=wide))


_HISTORY_KEYS = ("version", "recorded_at", "event", "phase", "actor")


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
    wide: WideOption = False,
    utc: UtcOption = False,
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
    if as_json:
        print_json({"executions": rows(found), "next": cursor})
        return
    print_table(*fit(None, execution_rows(found), list_columns(utc), width=out.width, wide=wide))
    if cursor:
        out.print(f"more: --after {cursor}", highlight=False)


@app.command()
def audit(
    execution_id: Annotated[str | None, typer.Argument(help="Execution id.")] = None,
    pending: Annotated[
        bool, typer.Option("--pending", help="Callbacks still pending or parked.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="With --pending: page size.")] = 50,
    after: Annotated[
        str | None, typer.Option(help="With --pending: the cursor the previous page printed.")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    wide: WideOption = False,
    utc: UtcOption = False,
) -> None:
    """The completion audit: one execution's callback story, or the pending ones (oldest
    completion first, a page at a time). An execution without a callback token is
    "no callback", never pending."""
    if (execution_id is None) == (not pending):
        with errors():
            raise UsageError("give an execution id or --pending (not both)")
    with open_views(url) as views:
        views.catch_up(["audit"])
        if pending:
            with errors():
                found, cursor = pending_page(views, limit, after)
            shown = [audit_dict(row) for row in found]
            if as_json:
                print_json({"pending": shown, "next": cursor})
                return
            title = "callbacks pending or parked" if shown else "no callback pending or parked"
            print_table(*fit(title, shown, audit_columns(utc), width=out.width, wide=wide))
            if cursor:
                out.print(f"more: --after {cursor}", highlight=False)
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
    story = audit_dict(row)
    if as_json:
        print_json(story)
    else:
        print_table(
            *fit(
                f"audit of {execution_id}", [story], audit_columns(utc), width=out.width, wide=wide
            )
        )
