"""Names shared by every layer: stored topics, log names, table names.

Stored topics are part of the stored form: an event's topic names the class that
decodes it. The classes moved once (round 2 gave the tree its layers), so each
topic has the name new events are written under and the name round 1 wrote; both
resolve to the same class (registered by :mod:`ledger.domain.events`), and every
reader that filters by topic uses both. Nothing stored is ever rewritten.
"""

from __future__ import annotations

LEDGER_LOG = "Ledger"
"""The ledger application's name: the log followers track (``Tracking`` rows)."""
DISPATCHER_LOG = "Dispatcher"
"""The dispatcher's log (its delivery events), followed by the audit view."""

LEDGER_EVENTS_TABLE = "ledger_events"
"""PostgreSQL: the ledger's events table (SQLite: the library's ``stored_events``)."""
VAULT_TABLE = "ledger_secret_keys"
"""The per-execution data keys of secret values (crypto-shredding)."""
KEYS_TABLE = "ledger_keys"
"""The store's own record: whether its events are encrypted, and the check value of
each cipher key that may write them (never a key)."""

EXECUTION_TOPIC = "ledger.domain.execution:Execution"
"""Topic of the execution aggregate; its events are ``<topic>.<Event>``."""
LEGACY_EXECUTION_TOPIC = "ledger.execution:Execution"
DELIVERY_TOPIC = "projections.dispatch.delivery:Delivery"
"""Topic of the dispatcher's delivery aggregate."""
LEGACY_DELIVERY_TOPIC = "projections.delivery:Delivery"


def execution_topics(event: str) -> tuple[str, str]:
    """Both stored topics of an execution event: ``execution_topics("Completed")``."""
    return f"{EXECUTION_TOPIC}.{event}", f"{LEGACY_EXECUTION_TOPIC}.{event}"


CREATED_TOPICS = execution_topics("Created")
STATUS_CHANGED_TOPICS = execution_topics("StatusChanged")
COMPLETED_TOPICS = execution_topics("Completed")


LEDGER_ANNOTATIONS = "execution-ledger/"
"""The prefix of the annotations the ledger writes itself; an update never changes them."""
CALLER_ANNOTATION_PREFIX = LEDGER_ANNOTATIONS + "caller-"
"""Annotations the caller activity writes on the executions it records (ledger-owned
metadata; never the platform's spec fields): where the caller waits, so the ledger can
heartbeat it, probe it and link to it."""
CALLER_WORKFLOW_ID = CALLER_ANNOTATION_PREFIX + "workflow-id"
CALLER_RUN_ID = CALLER_ANNOTATION_PREFIX + "run-id"
CALLER_ACTIVITY_ID = CALLER_ANNOTATION_PREFIX + "activity-id"
CALLER_ATTEMPT = CALLER_ANNOTATION_PREFIX + "attempt"
CALLER_HEARTBEAT_TIMEOUT = CALLER_ANNOTATION_PREFIX + "heartbeat-timeout"
"""Seconds (a decimal number), when the caller set a ``heartbeat_timeout``."""

CANCEL_REQUESTED_AT = "execution-ledger/cancel-requested-at"
"""Set (ISO-8601) once the ledger learned that the caller asked to cancel."""
CANCEL_REQUESTED_BY = "execution-ledger/cancel-requested-by"
CALLER_GONE_AT = "execution-ledger/caller-gone-at"
"""Set (ISO-8601) once the ledger learned that nobody waits for the execution any more."""
CALLER_GONE_REASON = "execution-ledger/caller-gone-reason"
CANCEL_REQUESTED_TOPICS = execution_topics("CancelRequested")
CALLER_GONE_TOPICS = execution_topics("CallerGone")
