"""What the CLI prints: its two consoles, JSON output, tables and record summaries.

``out`` is stdout (results), ``err`` is stderr (errors, progress, status lines).
Tokens and secret values are redacted with :mod:`ledger.domain.redaction`
before anything is shown.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from ledger.application import ExecutionRecord, HistoryEntry
from ledger.domain.redaction import display_dict, redact_token

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    """Pretty JSON on a terminal, plain indented JSON in a pipe."""
    out.print_json(data=value) if sys.stdout.isatty() else print(json.dumps(value, indent=2))


def print_table(table: Table, needed: int) -> None:
    """A table of :func:`ledger.cli._tables.fit`, never narrower than it needs."""
    if needed <= out.width:
        out.print(table)
    else:
        Console(width=needed, soft_wrap=True).print(table)


def summary(record: ExecutionRecord) -> dict[str, Any]:
    """An execution's id, phase and version."""
    return {"id": record.id, "phase": record.phase.proto_name, "version": record.version}


def print_record(record: ExecutionRecord, as_json: bool, verb: str, unchanged: str = "") -> None:
    """The one line (or JSON object) a write command prints. A write that found
    everything already recorded (``record.written`` false) says ``unchanged`` instead
    of ``verb``: nothing was appended."""
    written = getattr(record, "written", True)
    if as_json:
        print_json({**summary(record), "written": written})
        return
    phase = record.phase.name
    if written:
        out.print(f"{verb} {record.id}: {phase} (version {record.version})", highlight=False)
    else:
        out.print(
            f"{record.id}: {unchanged or 'already recorded'}, nothing written "
            f"({phase}, version {record.version})",
            highlight=False,
        )


def event_summary(entry: HistoryEntry) -> dict[str, Any]:
    """What an event of the history adds to its row: never a whole token."""
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
    result: dict[str, Any] = {}
    if event.output is not None:
        result["output"] = event.output
    if event.error is not None:
        result["error"] = event.error
    if event.reason:
        result["reason"] = event.reason
    return result


def rows(values: list[Any]) -> list[dict[str, Any]]:
    """Dataclass rows of a view as dicts, their times in ISO-8601."""
    result = []
    for row in values:
        fields = asdict(row)
        result.append(
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in fields.items()}
        )
    return result


def table(title: str, values: list[dict[str, Any]], columns: list[str]) -> Table:
    """A table of the given columns fitted to the console (:mod:`ledger.cli._tables`):
    ids are never cut nor wrapped, so that they can be copied; the last columns are
    dropped when they do not fit."""
    from ledger.cli._tables import Column, fit

    shown = [
        Column(c, c, priority=0 if c in ("id", "execution_id", "name") else i + 1)
        for i, c in enumerate(columns)
    ]
    return fit(title, values, shown, width=out.width)[0]
