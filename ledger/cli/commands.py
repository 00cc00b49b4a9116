"""``ledger``: the operators' command line.

Every command has ``--help`` and ``--json`` (machine-readable output on
stdout). Exit codes: 0 success, 1 an error with one clear line on stderr and
no traceback (bad input, unknown id, illegal transition, store unreachable),
2 a usage error. Secrets never appear: a callback token shows as the first 20
characters of its base64 and its length; ``is_secret`` runtime_env values show
as ``***``.

The store is ``--url`` or ``LEDGER_URL`` (see :mod:`ledger.config`).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.application import ExecutionRecord, HistoryEntry, Ledger, open_ledger_with
from ledger.contract.errors import LedgerError, UserError
from ledger.contract.ids import kind_of_id
from ledger.contract.kinds import Resource, kind_named
from ledger.contract.phases import Phase
from ledger.domain.redaction import display_dict, redact_token
from ledger.store.url import StoreConfig, parse_url

app = typer.Typer(
    name="ledger",
    help="An event-sourced ledger of agent and workflow executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
projections_app = typer.Typer(help="Read models: status, run, rebuild.", no_args_is_help=True)
dispatcher_app = typer.Typer(help="The completion dispatcher.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")
app.add_typer(dispatcher_app, name="dispatcher")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

M = TypeVar("M", bound=Message)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Store URL (default: $LEDGER_URL, else the SQLite default)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOption = Annotated[str, typer.Option("--actor", help="Who is acting (recorded in the audit).")]
VersionOption = Annotated[
    int | None,
    typer.Option("--expected-version", help="Fail unless the execution is at this version."),
]


class InputError(UserError):
    """A file or argument of the command line could not be read."""


def _fail(message: str) -> NoReturn:
    """One line on stderr (never markup-interpreted), exit code 1."""
    err.print(Text("error: ", style="red") + Text(" ".join(message.split())), highlight=False)
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    """User errors and store problems become one line on stderr and exit code 1."""
    try:
        yield
    except LedgerError as e:
        _fail(str(e))
    except (OSError, ValueError, RecursionError) as e:
        _fail(f"{type(e).__name__}: {e}")


def _config(url: str | None) -> StoreConfig:
    return parse_url(url)


@contextmanager
def _ledger(url: str | None) -> Iterator[Ledger]:
    with _errors():
        ledger = open_ledger_with(_config(url))
        try:
            yield ledger
        finally:
            ledger.close()


def _print_json(value: Any) -> None:
    out.print_json(data=value) if sys.stdout.isatty() else print(json.dumps(value, indent=2))


MAX_INPUT_BYTES = 16 * 1024 * 1024
"""A document given to the CLI is at most 16 MiB."""


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: no "billion laughs", no recursive documents."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def _read_document(path: str) -> Any:
    """A JSON or YAML document from a file, or stdin for ``-``."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with Path(path).open("rb") as file:
                raw = file.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {path!r}: {e.strerror or e}") from None
    if len(raw) > MAX_INPUT_BYTES:
        raise InputError(f"{path!r} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path!r} is not UTF-8 text: {e}") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    except RecursionError:
        raise InputError(f"{path!r} nests too deeply") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise InputError(f"{path!r} is neither JSON nor YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(f"{path!r} nests too deeply") from None


def _parse_into(message: M, document: Any, what: str) -> M:
    if not isinstance(document, dict):
        raise InputError(f"{what} must be a JSON/YAML object, not {type(document).__name__}")
    try:
        ParseDict(document, message)
    except ParseError as e:
        raise InputError(f"{what} does not match the contract: {e}") from None
    except (RecursionError, ValueError, TypeError) as e:
        raise InputError(f"{what} could not be read: {e}") from None
    return message


def _resource_from(document: Any) -> Resource:
    if not isinstance(document, dict):
        raise InputError("the resource must be a JSON/YAML object")
    kind = kind_named(str(document.get("kind", "")))
    resource: Resource = _parse_into(kind.empty_resource(), document, f"the {kind.name}")
    return resource


def _summary(record: ExecutionRecord) -> dict[str, Any]:
    return {"id": record.id, "phase": record.phase.proto_name, "version": record.version}


def _print_record(record: ExecutionRecord, as_json: bool, verb: str) -> None:
    if as_json:
        _print_json(_summary(record))
    else:
        out.print(f"{verb} {record.id}: {record.phase.proto_name} (version {record.version})")


# Commands on executions.


@app.command()
def create(
    path: Annotated[str, typer.Argument(help="JSON or YAML resource file, or - for stdin.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
    actor: ActorOption = "",
) -> None:
    """Record a new execution from a resource (the proto's JSON form, JSON or YAML)."""
    with _errors():
        resource = _resource_from(_read_document(path))
    with _ledger(url) as ledger:
        record = ledger.create(resource, actor=actor)
    _print_record(record, as_json, "created")


@app.command()
def status(
    execution_id: Annotated[str, typer.Argument(help="Execution id (aex-... or wex-...).")],
    phase: Annotated[
        str | None, typer.Option(help="New phase: PENDING, IN_PROGRESS, COMPLETED, ...")
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
    with _errors():
        kind = kind_of_id(execution_id)
        message: Any = kind.status_class()
        if patch is not None:
            message = _parse_into(message, _read_document(patch), "the status patch")
        if phase is not None:
            message.phase = _phase(phase)
        if not message.ByteSize():
            raise InputError("nothing to record: give --phase and/or --patch")
    with _ledger(url) as ledger:
        record = ledger.update_status(
            execution_id, message, expected_version=expected_version, actor=actor
        )
    _print_record(record, as_json, "updated")


def _phase(value: str) -> int:
    try:
        return int(Phase.parse(value))
    except (KeyError, ValueError):
        names = ", ".join(p.name for p in Phase if p is not Phase.UNSPECIFIED)
        raise InputError(f"unknown phase {value!r}: expected one of {names}") from None


def _json_object(value: str | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    document = _read_document(value[1:]) if value.startswith("@") else _loads(value, what)
    if not isinstance(document, dict):
        raise InputError(f"{what} must be a JSON object")
    return document


def _loads(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{what} is not valid JSON: {e}") from None


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
    with _errors():
        output_value = _json_object(output, "--output")
    with _ledger(url) as ledger:
        record = ledger.complete(
            execution_id, output_value, expected_version=expected_version, actor=actor
        )
    _print_record(record, as_json, "completed")


@app.command()
def fail(
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
    with _errors():
        details_value = _json_object(details, "--details")
    with _ledger(url) as ledger:
        record = ledger.fail(
            execution_id,
            message,
            error_type=error_type,
            details=details_value,
            expected_version=expected_version,
            actor=actor,
        )
    _print_record(record, as_json, "failed")


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
    with _ledger(url) as ledger:
        record = ledger.cancel(execution_id, reason, expected_version=expected_version, actor=actor)
    _print_record(record, as_json, "cancelled")


@app.command()
def show(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an execution: metadata, spec (secrets redacted), status and audit."""
    with _ledger(url) as ledger:
        record = ledger.read(execution_id)
    shown = display_dict(record.resource)
    if as_json:
        _print_json({"version": record.version, "resource": shown})
    else:
        out.print(f"[bold]{record.id}[/]  {record.phase.proto_name}  version {record.version}")
        out.print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), highlight=False)


def _event_summary(entry: HistoryEntry) -> dict[str, Any]:
    event: Any = entry.event
    if entry.type == "Created":
        spec = event.spec
        return {
            "kind": event.kind,
            "callback_token": redact_token(bytes(spec.callback_token)),
        }
    if entry.type == "StatusChanged":
        patch = display_dict(event.patch)
        patch.pop("phase", None)
        return {"patch": patch} if patch else {}
    summary: dict[str, Any] = {}
    if event.output is not None:
        summary["output"] = event.output
    if event.error is not None:
        summary["error"] = event.error
    if event.reason:
        summary["reason"] = event.reason
    return summary


@app.command()
def history(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every event of one execution, in order."""
    with _ledger(url) as ledger:
        entries = ledger.history(execution_id)
    rows = [
        {
            "version": e.version,
            "recorded_at": e.recorded_at.isoformat(),
            "event": e.type,
            "phase": e.phase.proto_name,
            "actor": getattr(e.event, "actor", ""),
            **_event_summary(e),
        }
        for e in entries
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"history of {execution_id}")
    for column in ("version", "recorded at", "event", "phase", "actor", "details"):
        table.add_column(column)
    for row in rows:
        details = {
            k: v
            for k, v in row.items()
            if k not in ("version", "recorded_at", "event", "phase", "actor")
        }
        table.add_row(
            str(row["version"]),
            row["recorded_at"],
            row["event"],
            row["phase"],
            row["actor"],
            json.dumps(details, ensure_ascii=False) if details else "",
        )
    out.print(table)


# Read models.


@contextmanager
def _views(url: str | None) -> Iterator[Any]:
    from projections.views import Views

    with _errors():
        views = Views(_config(url))
        try:
            yield views
        finally:
            views.close()


def _datetime(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{what} must be an ISO-8601 time, e.g. 2026-11-25T10:00:00+00:00"
        ) from None


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    result = []
    for row in rows:
        values = asdict(row)
        result.append(
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items()}
        )
    return result


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title)
    for column in columns:
        if column in ("id", "execution_id"):  # Whole, so that it can be copied.
            width = max((len(str(row.get(column) or "")) for row in rows), default=0)
            table.add_column(column, no_wrap=True, min_width=max(width, len(column)))
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


@app.command("list")
def list_(
    kind: Annotated[str | None, typer.Option(help="AgentExecution or WorkflowExecution.")] = None,
    phase: Annotated[str | None, typer.Option(help="Phase, e.g. IN_PROGRESS.")] = None,
    org: Annotated[str | None, typer.Option(help="Organisation.")] = None,
    label: Annotated[str | None, typer.Option(help="A label, key=value.")] = None,
    since: Annotated[str | None, typer.Option(help="Created at or after (ISO-8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Created before (ISO-8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 50,
    after: Annotated[str | None, typer.Option(help="Cursor from the previous page.")] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List executions from the status view, newest first (keyset pagination)."""
    with _errors():
        if kind is not None:
            kind_named(kind)
        phase_name = Phase(_phase(phase)).proto_name if phase is not None else None
        label_pair: tuple[str, str] | None = None
        if label is not None:
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise InputError("--label must be key=value")
            label_pair = (key, value)
        since_at, until_at = _datetime(since, "--since"), _datetime(until, "--until")
    with _views(url) as views:
        views.catch_up(["status"])
        rows, cursor = views.status.list(
            kind=kind,
            phase=phase_name,
            org=org,
            label=label_pair,
            since=since_at,
            until=until_at,
            limit=limit,
            after=after,
        )
    shown = _rows(rows)
    if as_json:
        _print_json({"executions": shown, "next": cursor})
        return
    out.print(
        _table(
            "executions",
            shown,
            ["id", "kind", "phase", "agent_id", "workflow_id", "org", "created_at", "completed_at"],
        )
    )
    if cursor:
        out.print(f"more: --after {cursor}")


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
        with _errors():
            raise InputError("give an execution id or --pending (not both)")
    columns = [
        "execution_id",
        "kind",
        "phase",
        "completed_at",
        "outcome",
        "attempts",
        "delivered_at",
        "latency_ms",
    ]
    with _views(url) as views:
        views.catch_up(["audit"])
        if pending:
            shown = _rows(_every_pending(views))
            if as_json:
                _print_json(shown)
            else:
                out.print(_table("callbacks pending or parked", shown, columns))
            return
        assert execution_id is not None
        with _errors():
            kind_of_id(execution_id)
        row = views.audit.get(execution_id)
    if row is None:
        _fail(f"execution {execution_id!r} has no completion in the audit (not completed yet?)")
    shown = _rows([row])
    if as_json:
        _print_json(shown[0])
    else:
        out.print(_table(f"audit of {execution_id}", shown, columns))


def _every_pending(views: Any, page: int = 1000) -> list[Any]:
    """Every pending or parked callback, page after page."""
    rows: list[Any] = []
    while True:
        batch = views.audit.pending(page, rows[-1] if rows else None)
        rows += batch
        if len(batch) < page:
            return rows


@projections_app.command("status")
def projections_status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Position, head and lag of each view and of the dispatcher."""
    with _views(url) as views:
        lags = views.lag()
    rows = [
        {"name": lag.name, "position": lag.position, "head": lag.head, "lag": lag.lag}
        for lag in lags
    ]
    if as_json:
        _print_json(rows)
    else:
        out.print(_table("projections", rows, ["name", "position", "head", "lag"]))


@projections_app.command("run")
def projections_run(
    names: Annotated[list[str] | None, typer.Argument(help="Views to run (default: all).")] = None,
    url: UrlOption = None,
) -> None:
    """Follow the ledger live until interrupted (SIGINT/SIGTERM stop cleanly)."""
    chosen = _view_names(names)
    stop = threading.Event()
    _on_signals(stop.set)
    from projections.views import freeze_startup_objects

    with _views(url) as views:
        freeze_startup_objects()
        err.print(f"following {', '.join(chosen)}; Ctrl-C to stop")
        views.run(stop, chosen)
    err.print("stopped")


def _view_names(names: list[str] | None) -> list[str]:
    known = ["status", "audit"]
    chosen = names or known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        with _errors():
            raise InputError(f"unknown view(s) {unknown}: expected {known}")
    return chosen


def _on_signals(handler: Callable[[], None]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: handler())


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str, typer.Argument(help="The view: status or audit.")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drop a view and replay it from position zero (never calls Temporal)."""
    _view_names([name])
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from projections.views import freeze_startup_objects

    with _views(url) as views:
        freeze_startup_objects()
        progress = Progress(
            TextColumn(f"rebuilding {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} events/s"),
            TimeRemainingColumn(),
            console=err,
            disable=as_json,
        )
        started = datetime.now()
        with progress:
            task = progress.add_task(name, total=None, rate="-")

            def report(done: int, total: int) -> None:
                elapsed = (datetime.now() - started).total_seconds() or 1e-9
                progress.update(task, completed=done, total=total, rate=f"{done / elapsed:,.0f}")

            count = views.rebuild(name, report)
    elapsed = (datetime.now() - started).total_seconds()
    if as_json:
        _print_json({"view": name, "events": count, "seconds": round(elapsed, 3)})
    else:
        out.print(f"rebuilt {name}: {count} events in {elapsed:.1f}s")


# The dispatcher.


@dispatcher_app.command("run")
def dispatcher_run(
    url: UrlOption = None,
    until_caught_up: Annotated[
        bool, typer.Option(help="Stop once every completion so far has its outcome.")
    ] = False,
    start_at_head: Annotated[
        bool,
        typer.Option(
            help="On a FIRST start only: skip completions already in the ledger (their "
            "callers are never woken). Without it a first start begins at position zero."
        ),
    ] = False,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Calls in flight at most.")] = 64,
) -> None:
    """Follow the ledger and wake each completed execution's caller (TEMPORAL_* settings)."""
    import asyncio
    import logging

    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import run_dispatcher

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with _errors():
        stats = asyncio.run(
            run_dispatcher(
                _config(url),
                TemporalSettings.from_env(),
                until_caught_up=until_caught_up,
                start_at_head=start_at_head,
                max_in_flight=max_in_flight,
            )
        )
    err.print(f"dispatcher stopped: outcomes {stats.outcomes}, skipped {stats.skipped}")


@dispatcher_app.command("retry-parked")
def dispatcher_retry_parked(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Retry every parked delivery now."""
    import asyncio

    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import Dispatcher, connect_client

    async def retry() -> tuple[int, dict[str, int]]:
        client = await connect_client(TemporalSettings.from_env())
        dispatcher = Dispatcher(_config(url), client)
        try:
            count = await dispatcher.retry_parked()
            return count, dispatcher.stats.outcomes
        finally:
            await asyncio.to_thread(dispatcher.close)

    with _errors():
        count, outcomes = asyncio.run(retry())
    if as_json:
        _print_json({"retried": count, "outcomes": outcomes})
    else:
        out.print(f"retried {count} parked deliveries: {outcomes}")


# Utilities.


@app.command()
def setup(url: UrlOption = None) -> None:
    """Create the schema, tables and functions of the ledger, dispatcher and views.

    Run once as the schema's owner; runtime roles then need no CREATE rights
    (see `ledger roles`).
    """
    from projections.dispatch.log import DispatcherLog
    from projections.views import Views

    with _errors():
        config = _config(url)
        for closable in (
            open_ledger_with(config, cache=False),
            _with_lock(config, lambda: DispatcherLog(config.component_env("dispatcher"))),
            _with_lock(config, lambda: Views(config)),
        ):
            closable.close()
    out.print(f"set up {config.redacted_url}")


def _with_lock(config: StoreConfig, make: Callable[[], Any]) -> Any:
    from ledger.store.connections import setup_lock

    with setup_lock(config):
        return make()


@app.command()
def roles(
    url: UrlOption = None,
    prefix: Annotated[str, typer.Option(help="Role name prefix.")] = "ledger",
) -> None:
    """Print the SQL granting least-privilege roles (writer, follower, reader).

    Run it as the owner after `ledger setup`, e.g. `ledger roles | psql ...`.
    """
    from ledger.store.roles import roles_sql

    with _errors():
        config = _config(url)
        if not config.is_postgres:
            raise InputError("roles are for PostgreSQL: LEDGER_URL is not a postgresql:// URL")
        print(roles_sql(config.env["POSTGRES_SCHEMA"], prefix), end="")


@app.command()
def keygen() -> None:
    """Print a new AES key for LEDGER_CIPHER_KEY (encryption at rest)."""
    from eventsourcing.cipher import AESCipher

    print(AESCipher.create_key(32))


@app.command()
def demo() -> None:
    """Run the end-to-end demo on SQLite and a local Temporal dev server."""
    from ledger.cli.demo import run_demo

    raise typer.Exit(run_demo(out))


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
