"""``ledger projections status|run|rebuild``: the read models (status and audit views).

``run`` follows the ledger live until SIGINT/SIGTERM, logging as set by
``--log-level`` and ``--log-format`` (:mod:`ledger.cli._logging`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger.cli._app import JsonOption, UrlOption, errors, open_views
from ledger.cli._input import UsageError
from ledger.cli._logging import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    configure_logging,
)
from ledger.cli._render import err, out, print_json, table

if TYPE_CHECKING:
    from ledger.store.horizon import HorizonHolder

projections_app = typer.Typer(help="Read models: status, run, rebuild.", no_args_is_help=True)

VIEW_NAMES = ["status", "audit"]


@projections_app.command("status")
def projections_status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Position, head and lag of each view and of the dispatcher."""
    from ledger.store.horizon import horizon_report

    with open_views(url) as views:
        lags = views.lag()
        horizons = {name: horizon_report(log.recorder) for name, log in views.logs.items()}
    shown: list[dict[str, Any]] = []
    for lag in lags:
        report = horizons.get(lag.name.partition("<-")[2])
        shown.append(
            {
                "name": lag.name,
                "position": lag.position,
                "head": lag.head,
                "lag": lag.lag,
                "held_back": report.held_back if report else 0,
                "held_by": _holder(report.holder) if report and report.holder else None,
            }
        )
    if as_json:
        print_json(shown)
        return
    out.print(table("projections", shown, ["name", "position", "head", "lag"]))
    for name, report in horizons.items():
        if report is not None and report.held_back:
            out.print(_held_back_line(name, report.held_back, report.holder))


def _holder(holder: HorizonHolder) -> dict[str, Any]:
    return {
        "pid": holder.pid,
        "database": holder.database,
        "user": holder.user,
        "application_name": holder.application_name,
        "state": holder.state,
        "since": holder.since.isoformat() if holder.since else None,
    }


def _held_back_line(log: str, held_back: int, holder: HorizonHolder | None) -> str:
    """``<log>: N events committed but held back by ...`` (see ledger.store.horizon)."""
    line = f"{log}: {held_back} notification ids committed but not readable yet"
    if holder is None:
        return line + " (the transactions running then have ended since)"
    who = f"pid {holder.pid}" if holder.pid is not None else "a prepared transaction"
    details = ", ".join(
        f"{key} {value}"
        for key, value in (
            ("database", holder.database),
            ("user", holder.user),
            ("application", holder.application_name or None),
            ("state", holder.state),
        )
        if value
    )
    since = ""
    if holder.since is not None:
        age = (datetime.now(holder.since.tzinfo) - holder.since).total_seconds()
        since = f" since {holder.since.isoformat(timespec='seconds')} ({age:.0f} s)"
    return f"{line}: waiting for the oldest transaction running, {who} ({details}){since}"


@projections_app.command("run")
def projections_run(
    names: Annotated[list[str] | None, typer.Argument(help="Views to run (default: all).")] = None,
    url: UrlOption = None,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Follow the ledger live until interrupted (SIGINT/SIGTERM stop cleanly)."""
    chosen = _view_names(names)
    status_line = configure_logging(log_level, log_format)
    stop = threading.Event()
    _on_signals(stop.set)
    from projections.views import freeze_startup_objects

    with open_views(url, read_only=False) as views:
        freeze_startup_objects()
        status_line(f"following {', '.join(chosen)}; Ctrl-C to stop")
        views.run(stop, chosen)
    status_line("stopped")


def _view_names(names: list[str] | None) -> list[str]:
    chosen = names or VIEW_NAMES
    unknown = [n for n in chosen if n not in VIEW_NAMES]
    if unknown:
        with errors():
            raise UsageError(
                f"unknown view(s) {', '.join(unknown)}: expected {' or '.join(VIEW_NAMES)}"
            )
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

    with open_views(url, read_only=False) as views:
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
        print_json({"view": name, "events": count, "seconds": round(elapsed, 3)})
    else:
        out.print(f"rebuilt {name}: {count} events in {elapsed:.1f}s")
