"""One execution, and a page of them, as the CLI shows them to people.

``ledger show`` prints a header line (id, kind, phase, version) and then the
resource in sections (metadata, spec, status, recorded, ending, callback) as YAML, with phases and
other enum values without their prefix (``IN_PROGRESS``, ``COMPLETED``), times
to the second in the local zone (``--utc``: UTC), the ledger's audit reduced to
who created it and when it last changed, a token never whole and secret values
as ``***``. ``ledger list`` uses :func:`list_columns`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import yaml

from ledger.application import ExecutionRecord
from ledger.cli._render import out
from ledger.cli._tables import Column, duration, phase_name, timer, when

ENUM_PREFIXES = (
    "EXECUTION_",
    "TOOL_CALL_",
    "SUB_AGENT_",
    "TODO_",
    "MESSAGE_",
    "WORKFLOW_TASK_",
)
TIME_KEYS = ("_at", "timestamp")


def list_columns(utc: bool) -> list[Column]:
    """``ledger list``'s columns, most important first."""
    return [
        Column("id", "id", 0),
        Column("kind", "kind", 5, lambda v: str(v).removesuffix("Execution").lower()),
        Column("phase", "phase", 0, phase_name),
        Column("target", "agent / workflow", 2),
        Column("org", "org", 3),
        Column("created_at", "created", 1, timer(utc)),
        Column("completed_at", "completed", 4, timer(utc)),
    ]


def execution_rows(found: list[Any]) -> list[dict[str, Any]]:
    """Rows of the status view, each with its ``target`` (agent or workflow)."""
    result = []
    for row in found:
        values = asdict(row)
        values["target"] = (
            values.get("agent_id")
            or values.get("workflow_id")
            or values.get("workflow_instance_id")
        )
        result.append(values)
    return result


def print_resource(
    record: ExecutionRecord,
    shown: dict[str, Any],
    ending: dict[str, Any] | None,
    utc: bool,
    story: dict[str, Any] | None = None,
) -> None:
    """``ledger show``'s text: a header line, then the sections."""
    status = dict(shown.get("status") or {})
    audit = status.pop("audit", {}) or {}
    out.print(
        f"[bold]{record.id}[/]  {shown.get('kind', '')}  "
        f"[bold]{record.phase.name}[/]  version {record.version}",
        highlight=False,
    )
    sections: dict[str, Any] = {}
    for name in ("metadata", "spec"):
        if shown.get(name):
            sections[name] = shown[name]
    if status:
        sections["status"] = status
    recorded = _recorded(audit)
    if recorded:
        sections["recorded"] = recorded
    if ending is not None:
        sections["ending"] = ending
    callback = _callback(record, story)
    if callback:
        sections["callback"] = callback
    for name, body in sections.items():
        text = yaml.safe_dump(_for_people(body, utc), sort_keys=False, allow_unicode=True)
        out.print(f"\n[bold]{name}[/]", highlight=False)
        out.print(_indent(text), highlight=False, markup=False)


def _callback(record: ExecutionRecord, story: dict[str, Any] | None) -> dict[str, Any]:
    """The callback's story: ``no callback`` without a token; else its outcome,
    attempts, latency and times (see :mod:`ledger.cli._audit`)."""
    if not record.resource.spec.callback_token:
        return {"outcome": "no callback (no token: nobody waits)"}
    if story is None:
        if record.phase.is_terminal:
            return {"outcome": f"see `ledger audit {record.id}`"}
        return {"outcome": "when it ends, the dispatcher wakes the caller"}
    result: dict[str, Any] = {
        "outcome": str(story["outcome"]).replace("_", " "),
        "attempts": story["attempts"],
    }
    if story.get("latency_ms") is not None:
        result["latency"] = duration(story["latency_ms"])
    for key in ("delivered_at", "recorded_at"):
        if story.get(key) and (key == "delivered_at" or not story.get("delivered_at")):
            result[key] = story[key]
    return result


def _recorded(audit: dict[str, Any]) -> dict[str, Any]:
    spec, status = audit.get("spec_audit") or {}, audit.get("status_audit") or {}
    result: dict[str, Any] = {}
    if spec.get("created_at"):
        result["created_at"] = spec["created_at"]
    by = (spec.get("created_by") or {}).get("id")
    if by:
        result["created_by"] = by
    if status.get("updated_at"):
        result["updated_at"] = status["updated_at"]
        result["last_event"] = status.get("event", "")
    return result


def _for_people(value: Any, utc: bool, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _for_people(v, utc, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_people(v, utc, key) for v in value]
    if isinstance(value, str):
        if key.endswith(TIME_KEYS) and value[:2].isdigit():
            return when(value, utc)
        if key in ("phase", "status", "type", "task_type") and value.isupper():
            for prefix in ENUM_PREFIXES:
                if value.startswith(prefix):
                    return value.removeprefix(prefix)
    return value


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").splitlines())
