"""The logs the views follow, as they read them: notifications, and only the fields they need.

:class:`LogReader` wraps one application's notification log (the ledger's or the
dispatcher's). Views decode only the fields they need. When an event's class has
no ``class_version`` above 1 (so there is nothing to upcast), the stored JSON is
read directly (after the application's cipher and compressor, if any): the time
and phase of ``StatusChanged``/``Completed`` from the exact text the library
writes (:func:`timestamp_and_phase`, anything else falls back to a JSON parse),
and only the protobuf values the view uses (:func:`pb_value`, :func:`iso_value`);
otherwise the application's mapper decodes the whole event, with upcasting.
``LogReader.fast = False`` forces the mapper; ``bench/catchup.py`` measures both,
and a test checks they agree.

:func:`last_notification_id` finds the last event of some topics in a log (the
dispatcher's head, for its lag), with SQL on the library's own tables.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder, Notification
from eventsourcing.utils import TopicError, resolve_topic
from google.protobuf.message import Message
from psycopg import Cursor as PgCursor
from psycopg import sql
from psycopg.rows import TupleRow, tuple_row

from ledger.contract.phases import Phase
from ledger.store.transcodings import message_classes

PHASE_NAMES: dict[int, str] = {int(p): p.proto_name for p in Phase}
"""A phase's number (as events store it) -> its platform spelling, e.g.
``EXECUTION_COMPLETED`` (the spelling the views' ``phase`` columns hold)."""


_PB_CLASSES: dict[str, type[Message]] = {
    "pb:" + cls.DESCRIPTOR.full_name: cls for cls in message_classes()
}


def pb_value(value: Mapping[str, Any]) -> Message:
    """A protobuf value as the ledger's transcoding stores it (``pb:<name>``, base64)."""
    cls = _PB_CLASSES[value["_type_"]]
    return cls.FromString(base64.b64decode(value["_data_"]))


def iso_value(value: Mapping[str, Any]) -> datetime:
    """A datetime as the library's ``DatetimeAsISO`` transcoding stores it."""
    return datetime.fromisoformat(value["_data_"])


_TIMESTAMP_AND_PHASE = re.compile(
    rb'\{"timestamp":\{"_type_":"datetime_iso","_data_":"([^"]*)"\},"phase":([0-9]+),'
)
_CLASS_VERSION = b'"class_version":'


def timestamp_and_phase(data: bytes) -> tuple[datetime, int] | None:
    """(timestamp, phase) of a stored event whose JSON starts with exactly
    ``{"timestamp":{"_type_":"datetime_iso","_data_":"<iso>"},"phase":<digits>,``
    (how the library encodes the ledger's StatusChanged and Completed), read
    without parsing the rest; None when the text has any other shape."""
    match = _TIMESTAMP_AND_PHASE.match(data)
    if match is None or _CLASS_VERSION in data:
        return None
    try:
        timestamp = datetime.fromisoformat(match[1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return timestamp, int(match[2])


@lru_cache(maxsize=256)
def _is_current_version(topic: str) -> bool | None:
    """True if ``topic``'s class has nothing to upcast; None if the topic is unknown."""
    try:
        cls = resolve_topic(topic)
    except (TopicError, ImportError, AttributeError):
        return None
    return int(getattr(cls, "class_version", 1)) == 1


def known_topic(topic: str) -> bool:
    """Whether ``topic`` names a class of this code (a renamed or removed one does not)."""
    return _is_current_version(topic) is not None


class LogReader:
    """One application's notification log, as a view reads it."""

    def __init__(self, app: Application[Any]) -> None:
        self.app = app
        self.name = app.name
        self.recorder: ApplicationRecorder = app.recorder
        self.mapper = app.mapper
        self.fast = True
        """Read the stored JSON directly when nothing needs upcasting (see the module doc)."""

    def head(self) -> int:
        """The id of the log's last notification (0 when empty)."""
        return self.recorder.max_notification_id() or 0

    def plain_topics(self, topics: Collection[str]) -> frozenset[str]:
        """Those of ``topics`` whose stored state is the library's plain JSON, as is:
        the fast path is on, there is no cipher nor compressor, and their classes
        have nothing to upcast (a page's events are then read without more checks)."""
        if not self.fast or self.mapper.cipher is not None or self.mapper.compressor is not None:
            return frozenset()
        return frozenset(topic for topic in topics if _is_current_version(topic))

    def data(self, notification: Notification) -> bytes | None:
        """The event's stored JSON (after the cipher and compressor), or None when it
        must go through :meth:`event` (fast path off, or a class with upcasting)."""
        if not self.fast or not _is_current_version(notification.topic):
            return None
        data = notification.state
        if self.mapper.cipher is not None:
            data = self.mapper.cipher.decrypt(data)
        if self.mapper.compressor is not None:
            data = self.mapper.compressor.decompress(data)
        return data

    def state(self, notification: Notification) -> dict[str, Any] | None:
        """The event's stored state as plain JSON (transcoded values left as
        ``{"_type_", "_data_"}``), or None when it must go through :meth:`event`."""
        data = self.data(notification)
        return self.parse(data) if data is not None else None

    @staticmethod
    def parse(data: bytes) -> dict[str, Any] | None:
        """:meth:`data` as JSON; None if the stored event carries a class_version."""
        state: dict[str, Any] = json.loads(data)
        return None if "class_version" in state else state

    def event(self, notification: Notification) -> Any | None:
        """The domain event, decoded by the application's mapper; None if unknown."""
        if _is_current_version(notification.topic) is None:
            return None
        return self.mapper.to_domain_event(notification)


def last_notification_id(recorder: ApplicationRecorder, topics: Sequence[str]) -> int:
    """The id of the last notification with one of ``topics`` (0 if none): a backward
    scan of the notification id index that stops at the first match."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    if isinstance(recorder, PostgresApplicationRecorder):
        statement = sql.SQL(
            "SELECT notification_id FROM {table} WHERE topic = ANY(%s) "
            "ORDER BY notification_id DESC LIMIT 1"
        ).format(table=sql.Identifier(recorder.datastore.schema, recorder.events_table_name))
        with recorder.datastore.get_connection() as conn:
            cursor: PgCursor[TupleRow] = conn.cursor(row_factory=tuple_row)
            row = cursor.execute(statement, (list(topics),)).fetchone()
            return int(row[0]) if row else 0
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement_text = (
            f'SELECT rowid FROM "{recorder.events_table_name}" '  # noqa: S608
            f"WHERE topic IN ({', '.join('?' * len(topics))}) "
            "ORDER BY rowid DESC LIMIT 1"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement_text, tuple(topics))
            found = c.fetchone()
            return int(found[0]) if found else 0
    # Other recorders: scan forward (in-memory stores only).
    last, start = 0, 0
    while True:
        page = recorder.select_notifications(
            start=start, limit=1000, topics=list(topics), inclusive_of_start=False
        )
        if not page:
            return last
        last = start = page[-1].id
