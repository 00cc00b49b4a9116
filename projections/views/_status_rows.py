"""The status view's tables (schema 3): their columns and DDL, a row as
:class:`ExecutionRow`, and the listing's cursors.

- ``view_status``: id, kind, phase (the platform's spelling, e.g.
  ``EXECUTION_COMPLETED``), agent_id / workflow_id / workflow_instance_id (from the
  spec, NULL when not set), org, labels (a JSON object, the latest
  ``MetadataChanged``'s or the create's), created_at, updated_at (the last event's
  time), completed_at, has_callback (the spec has a ``callback_token``), version (the
  execution's version: every event moves it), cancel_requested_at and caller_gone_at
  (the ``CancelRequested`` / ``CallerGone`` events' times), deleted.
- ``view_status_labels``: one row per current label of each execution, with the
  execution's created_at, for listing by label.
- ``view_status_counts``: executions not deleted per (kind, phase), kept in the same
  transactions as the rows, so counting never scans.
- ``view_status_minutes``: events of the ledger per minute of their own time (the
  minute as whole minutes since the Unix epoch, UTC), kept in the same transactions
  as the rows: every command appends events, so this is the ledger's write rate,
  read with one range of the primary key (the console's chart). Encrypted events
  keep their time inside the ciphertext; the view holds it in the clear, as it
  holds created_at.
- ``view_status_dead_letters``: events the view could not decode.

Schema 1 had neither cancel_requested_at, caller_gone_at nor deleted, and kept the
labels of the create; schema 2 had no ``view_status_minutes``. Tables of either
must be rebuilt.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from ledger.contract.phases import Phase
from projections.views._recorder import as_utc

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class ExecutionRow:
    """One execution as the status view shows it."""

    id: str
    kind: str
    phase: str
    """The platform's spelling, e.g. ``EXECUTION_IN_PROGRESS``."""
    agent_id: str | None
    workflow_id: str | None
    workflow_instance_id: str | None
    org: str | None
    labels: dict[str, str] = field(hash=False)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    has_callback: bool
    version: int
    cancel_requested_at: datetime | None = None
    caller_gone_at: datetime | None = None
    deleted: bool = False


COLUMNS = (
    "id, kind, phase, agent_id, workflow_id, workflow_instance_id, org, labels, "
    "created_at, updated_at, completed_at, has_callback, version, "
    "cancel_requested_at, caller_gone_at, deleted"
)
ROW_TYPES = (
    ("id", "text"),
    ("kind", "text"),
    ("phase", "text"),
    ("agent_id", "text"),
    ("workflow_id", "text"),
    ("workflow_instance_id", "text"),
    ("org", "text"),
    ("labels", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("completed_at", "timestamptz"),
    ("has_callback", "boolean"),
    ("version", "bigint"),
    ("cancel_requested_at", "timestamptz"),
    ("caller_gone_at", "timestamptz"),
    ("deleted", "boolean"),
)
UPDATED_TYPES = (
    ("phase", "text"),
    ("labels", "text"),
    ("updated_at", "timestamptz"),
    ("completed_at", "timestamptz"),
    ("cancel_requested_at", "timestamptz"),
    ("caller_gone_at", "timestamptz"),
    ("deleted", "boolean"),
    ("version", "bigint"),
)
LABEL_TYPES = (
    ("execution_id", "text"),
    ("key", "text"),
    ("value", "text"),
    ("created_at", "timestamptz"),
)
PHASE_NUMBERS = {p.proto_name: int(p) for p in Phase}


def ddl(postgres: bool) -> list[str]:
    """The tables and indexes (``{ix}``: the index names' prefix, see ViewRecorder)."""
    return [
        "CREATE TABLE IF NOT EXISTS {status} ("
        "id {id} PRIMARY KEY, "
        "kind text NOT NULL, "
        "phase text NOT NULL, "
        "agent_id text, "
        "workflow_id text, "
        "workflow_instance_id text, "
        "org text, "
        "labels text NOT NULL, "
        "created_at {ts} NOT NULL, "
        "updated_at {ts} NOT NULL, "
        "completed_at {ts}, "
        "has_callback {bool} NOT NULL, "
        "version {bigint} NOT NULL, "
        "cancel_requested_at {ts}, "
        "caller_gone_at {ts}, "
        "deleted {bool} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS {ix}view_status_created_idx ON {status} (created_at, id)",
        "CREATE INDEX IF NOT EXISTS {ix}view_status_phase_idx ON {status} (phase, created_at, id)",
        "CREATE INDEX IF NOT EXISTS {ix}view_status_org_idx ON {status} (org, created_at, id)",
        "CREATE TABLE IF NOT EXISTS {labels} ("
        "execution_id {id} NOT NULL, "
        "key text NOT NULL, "
        "value text NOT NULL, "
        "created_at {ts} NOT NULL, "
        "PRIMARY KEY (key, value, created_at, execution_id))",
        "CREATE TABLE IF NOT EXISTS {counts} ("
        "kind text NOT NULL, "
        "phase text NOT NULL, "
        "n {bigint} NOT NULL, "
        "PRIMARY KEY (kind, phase))",
        "CREATE TABLE IF NOT EXISTS {minutes} ("
        "minute {bigint} PRIMARY KEY, "
        "events {bigint} NOT NULL)",
    ]


def minute_of(moment: datetime) -> int:
    """The ``view_status_minutes`` key of ``moment``: whole minutes since the Unix
    epoch, UTC (naive datetimes are UTC)."""
    return int(as_utc(moment).timestamp()) // 60


def labels_json(labels: Mapping[str, str]) -> str:
    """The ``labels`` column: the labels as a JSON object, keys sorted."""
    return _labels_json_of(tuple(sorted(labels.items()))) if labels else "{}"


@lru_cache(maxsize=4096)
def _labels_json_of(items: tuple[tuple[str, str], ...]) -> str:
    # Label sets repeat across executions (env, team, ...): each is encoded once.
    return json.dumps(dict(items), sort_keys=True)


def phase_name(value: str) -> str:
    """The platform spelling of a phase given in any accepted form; anything else as is
    (it then matches nothing)."""
    try:
        return Phase.parse(value).proto_name
    except (KeyError, ValueError):
        return value


def encode_cursor(created_at: datetime, execution_id: str) -> str:
    data = json.dumps([created_at.isoformat(), execution_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, execution_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return as_utc(datetime.fromisoformat(created_at)), str(execution_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise ValueError(f"not a cursor returned by list(): {cursor[:40]!r}") from None
