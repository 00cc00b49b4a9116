"""``ledger watch ID`` and ``ledger tail``: following the ledger as it is written.

``watch`` prints each event of one execution (those already recorded, then new
ones as they come) and ends, exit 0, when the execution reaches a terminal phase,
like ``kubectl get -w`` (``--timeout``: exit 1 if it has not ended by then).
``tail`` prints the last events of the whole ledger, and with ``--follow`` every
new one until interrupted. Both read the store by polling (``--interval``); with
``--json`` each event is one JSON line (NDJSON). Neither writes anything, and a
token is never shown whole.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from ledger.application import HistoryEntry, Ledger
from ledger.cli._app import JsonOption, UrlOption, app, open_ledger
from ledger.cli._input import DeadlineError
from ledger.cli._render import event_summary, out
from ledger.cli._tables import UtcOption, phase_name, when
from ledger.contract.phases import Phase

IntervalOption = Annotated[
    float,
    typer.Option("--interval", min=0.05, metavar="SECONDS", help="How often to look."),
]


@app.command()
def watch(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Fail unless it ends by then."),
    ] = None,
    interval: IntervalOption = 0.5,
    url: UrlOption = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
) -> None:
    """Follow one execution live: each event as it is recorded, until it ends."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with open_ledger(url, read_only=True) as ledger:
        seen = 0
        while True:
            entries = ledger.history(execution_id)
            for entry in entries[seen:]:
                _print_entry(entry, execution_id, as_json, utc)
            seen = len(entries)
            if entries[-1].phase.is_terminal:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineError(
                    f"execution {execution_id!r} is still {entries[-1].phase.name} "
                    f"after {timeout:g} s"
                )
            time.sleep(interval)


@app.command()
def tail(
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="How many of the last events.")
    ] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new events as they come.")
    ] = False,
    interval: IntervalOption = 0.5,
    url: UrlOption = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
) -> None:
    """The ledger's last events, every execution's (with --follow: live)."""
    with open_ledger(url, read_only=True) as ledger:
        head = ledger.recorder.max_notification_id() or 0
        position = max(head - lines, 0)
        while True:
            batch = ledger.recorder.select_notifications(position + 1, 500)
            for notification in batch:
                _print_notification(ledger, notification, as_json, utc)
                position = notification.id
            if len(batch) == 500:
                continue
            if not follow:
                return
            time.sleep(interval)


def _print_entry(entry: HistoryEntry, execution_id: str, as_json: bool, utc: bool) -> None:
    line = {
        "execution_id": execution_id,
        "version": entry.version,
        "recorded_at": entry.recorded_at.isoformat(),
        "event": entry.type,
        "phase": entry.phase.proto_name,
        "actor": getattr(entry.event, "actor", ""),
        **event_summary(entry),
    }
    _emit(line, as_json, utc)


def _print_notification(ledger: Ledger, notification: Any, as_json: bool, utc: bool) -> None:
    event: Any = ledger.mapper.to_domain_event(notification)
    phase = getattr(event, "phase", 0) or (
        Phase.PENDING if type(event).__name__ == "Created" else 0
    )
    line = {
        "position": notification.id,
        "execution_id": str(notification.originator_id),
        "version": notification.originator_version,
        "recorded_at": event.timestamp.isoformat(),
        "event": type(event).__name__,
        "phase": Phase(phase).proto_name if phase else "",
        "actor": getattr(event, "actor", ""),
    }
    _emit(line, as_json, utc)


def _emit(line: dict[str, Any], as_json: bool, utc: bool) -> None:
    if as_json:
        print(json.dumps(line, ensure_ascii=False), flush=True)
        return
    fixed = ("position", "execution_id", "version", "recorded_at", "event", "phase", "actor")
    details = {k: v for k, v in line.items() if k not in fixed}
    parts = [
        when(line["recorded_at"], utc),
        line["execution_id"],
        f"v{line['version']}",
        line["event"],
        phase_name(line["phase"]),
        f"by {line['actor']}" if line["actor"] else "",
        json.dumps(details, ensure_ascii=False) if details else "",
    ]
    out.print("  ".join(p for p in parts if p), highlight=False, markup=False)
    out.file.flush()
