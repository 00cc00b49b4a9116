"""The overview's small charts: commands (events appended to the ledger), executions
created, completed and their callbacks answered, per second, minute by minute over the
last hour, as inline SVG (no script).

The figures come from what the views know, never from the log itself (an event's time
is inside its stored state, encrypted when the store is): the status view's events
per minute (``view_status_minutes``, kept with its rows from each event's own time;
every command appends one event or more, e.g. a terminal status patch two), its
``created_at`` (indexed), the audit view's ``completed_at`` (indexed) and
``delivered_at`` (the time an outcome was recorded, read among the completions of the
last two hours). Each is one query of at most 60 rows on an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from projections.views import Views

MINUTES = 60
WIDTH, HEIGHT = 240, 48


def _bucket(postgres: bool, column: str) -> str:
    """The minute (0..59) of ``column`` since the start of the hour shown."""
    if postgres:
        return f"floor(extract(epoch FROM ({column} - %s)) / 60)"
    return f"(({column} - %s) / 60000000)"  # SQLite's view times are microseconds.


def _per_minute(
    recorder: Any, table: str, column: str, since: datetime, extra: str = ""
) -> list[int]:
    postgres = not isinstance(recorder.db_time(since), int)
    bucket = _bucket(postgres, column)
    sql = recorder.sql(
        f"SELECT {bucket} AS m, count(*) FROM {{{table}}} "  # noqa: S608 (constant names)
        f"WHERE {column} >= %s {extra} GROUP BY m"
    )
    start = recorder.db_time(since)
    params: list[Any] = [start, start]
    if extra:
        params.append(recorder.db_time(since - timedelta(hours=1)))
    counts = [0] * MINUTES
    with recorder.read() as tx:
        tx.execute(sql, params)
        for minute, count in tx.fetchall():
            if minute is not None and 0 <= int(minute) < MINUTES:
                counts[int(minute)] += int(count)
    return counts


def charts(views: Views, now: datetime) -> str:
    """The three charts' HTML (each a figure with an SVG and its caption)."""
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    status, audit = views.status.recorder, views.audit.recorder
    series = [
        ("Commands (events appended)", views.status.events_per_minute(since, MINUTES)),
        ("Executions created", _per_minute(status, "status", "created_at", since)),
        ("Executions completed", _per_minute(audit, "audit", "completed_at", since)),
        (
            "Callbacks answered (outcome recorded)",
            _per_minute(audit, "audit", "delivered_at", since, "AND completed_at >= %s"),
        ),
    ]
    figures = "".join(chart(title, counts) for title, counts in series)
    return (
        f'<h2>The last hour, per second (minute by minute)</h2><div class="charts">{figures}</div>'
    )


def chart(title: str, counts: Sequence[int]) -> str:
    """One bar per minute, its height the minute's mean rate per second."""
    rates = [c / 60 for c in counts]
    top = max(rates) or 1.0
    step = WIDTH / len(rates)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{HEIGHT - h:.1f}" width="{max(step - 1, 1):.1f}" '
        f'height="{h:.1f}"><title>{r:.2f}/s</title></rect>'
        for i, r in enumerate(rates)
        if (h := HEIGHT * r / top) > 0
    )
    label = (
        f"{title}: last minute {rates[-1]:.2f}/s, peak {max(rates):.2f}/s, "
        f"{sum(counts)} in the hour"
    )
    return (
        f'<figure class="chart"><svg role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" fill="#0b3d91">'
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#555"/>{bars}</svg>'
        f"<figcaption>{escape(label)}</figcaption></figure>"
    )
