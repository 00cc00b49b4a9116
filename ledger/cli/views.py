"""``ledger projections status|run|rebuild|dead-letters``: the read models (status and
audit views).

``run`` follows the ledger live until SIGINT/SIGTERM, logging as set by
``--log-level`` and ``--log-format`` (:mod:`ledger.cli._logging`); it rebuilds a
stale view first. ``rebuild`` is blue/green: the old view answers until the new one
is swapped in. An event a follower cannot decode becomes a dead letter (listed by
``dead-letters``, counted by ``status``) unless ``--stop-on-error`` is given.
See ``docs/READ_MODELS.md``.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
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
from ledger.cli._observability import MetricsAddressOption, check_metrics_address, observed
from ledger.cli._render import err, out, print_json, print_table
from ledger.cli._tables import Column, fit

if TYPE_CHECKING:
    from ledger.store.horizon import HorizonHolder

projections_app = typer.Typer(
    help="Read models: status, run, rebuild, dead-letters.", no_args_is_help=True
)

VIEW_NAMES = ["status", "audit"]

StopOnErrorOption = Annotated[
    bool,
    typer.Option(
        "--stop-on-error",
        help="Stop at an event that cannot be decoded instead of recording a dead letter.",
    ),
]


@projections_app.command("status")
def projections_status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Position, head and lag of each view and of the dispatcher; dead letters, stale
    views and, on PostgreSQL, what holds followers back."""
    from ledger.store.horizon import horizon_report

    with open_views(url) as views:
        lags = views.lag()
        stale = set(views.stale())
        dead = Counter(letter.follower for letter in views.dead_letters())
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
                "dead_letters": dead.get(lag.name, 0),
                "stale": lag.name.partition("<-")[0] in stale,
                "held_back": report.held_back if report else 0,
                "held_by": _holder(report.holder) if report and report.holder else None,
            }
        )
    if as_json:
        print_json(shown)
        return
    columns = [
        Column("name", "name", 0),
        Column("position", "position", 0),
        Column("head", "head", 2),
        Column("lag", "lag", 0),
        Column("dead_letters", "dead letters", 1),
        Column("stale", "stale", 1, show=lambda v: "yes" if v else ""),
    ]
    print_table(*fit("projections", shown, columns, width=out.width))
    for name in sorted(stale):
        out.print(f"the {name} view is stale: rebuild it with `ledger projections rebuild {name}`")
    if dead:
        out.print("dead letters: `ledger projections dead-letters`")
    for name, report in horizons.items():
        if report is not None and report.held_back:
            out.print(_held_back_line(name, report.held_back, report.holder), highlight=False)


@projections_app.command("dead-letters")
def projections_dead_letters(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Events the views could not decode: follower, position, event, topic, error."""
    with open_views(url) as views:
        letters = views.dead_letters()
    shown = [
        {
            "follower": letter.follower,
            "position": letter.position,
            "event_id": letter.event_id,
            "event_version": letter.event_version,
            "topic": letter.topic,
            "error": letter.error,
            "recorded_at": letter.recorded_at.isoformat() if letter.recorded_at else None,
        }
        for letter in letters
    ]
    if as_json:
        print_json(shown)
        return
    columns = [
        Column("follower", "follower", 0),
        Column("position", "position", 0),
        Column("event_id", "event id", 0),
        Column("event_version", "version", 2),
        Column("topic", "topic", 3),
        Column("error", "error", 1, flexible=True),
    ]
    print_table(*fit("dead letters", shown, columns, width=out.width))


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
    stop_on_error: StopOnErrorOption = False,
    as_json: JsonOption = False,
    metrics_address: MetricsAddressOption = None,
) -> None:
    """Follow the ledger live until interrupted (SIGINT/SIGTERM stop cleanly); a stale
    view is rebuilt first. --json: the logs as JSON lines (as --log-format json)."""
    chosen = _view_names(names)
    with errors():
        check_metrics_address(metrics_address)
    status_line = configure_logging(log_level, LogFormat.JSON if as_json else log_format)
    stop = threading.Event()
    _on_signals(stop.set)
    from projections.views import freeze_startup_objects

    with (
        open_views(url, read_only=False) as views,
        observed("ledger-projections", views.config, metrics_address),
    ):
        views.stop_on_error = stop_on_error
        freeze_startup_objects()

        def rebuilding(name: str) -> None:
            status_line(f"the {name} view is stale: rebuilding it before following")

        status_line(f"following {', '.join(chosen)}; Ctrl-C to stop")
        with errors():
            views.run(stop, chosen, on_rebuild=rebuilding)
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
    stop_on_error: StopOnErrorOption = False,
) -> None:
    """Replay a view from position zero beside the live one and swap it in once caught
    up; the old view answers until then (never calls Temporal)."""
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
        views.stop_on_error = stop_on_error
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
        task = progress.add_task(name, total=None, rate="-")
        shown: list[bool] = []

        def report(done: int, total: int) -> None:
            if not shown:  # Shown from the first page: an error before it stands alone.
                progress.start()
                shown.append(True)
            elapsed = (datetime.now() - started).total_seconds() or 1e-9
            progress.update(task, completed=done, total=total, rate=f"{done / elapsed:,.0f}")

        try:
            count = views.rebuild(name, report)
        except BaseException:
            progress.update(task, visible=False)
            raise
        finally:
            if shown:
                progress.stop()
    elapsed = (datetime.now() - started).total_seconds()
    if as_json:
        print_json({"view": name, "events": count, "seconds": round(elapsed, 3)})
    else:
        out.print(f"rebuilt {name}: {count} events in {elapsed:.1f}s")
