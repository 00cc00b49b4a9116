"""Tables and values for people: fitted to the terminal, short, never cut mid-word.

A listing is a :class:`Column` list. :func:`fit` keeps the columns that fit the
console's width (80 in a pipe unless ``COLUMNS`` says otherwise), dropping the
least important first (``priority``: 0 is never dropped), so that no cell is
wrapped and an id is always whole; ``--wide`` keeps them all. A ``flexible``
column (free text, e.g. a history's details) gets the width left, elided beyond.
Phases lose their ``EXECUTION_`` prefix, times show in the local zone to the
second (``--utc``: in UTC, marked ``Z``), latencies read as "36 ms" or "2.8 s".
``--json`` prints none of this: it keeps every field at full precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

WideOption = Annotated[
    bool, typer.Option("--wide", "-w", help="Every column, however wide the table.")
]
UtcOption = Annotated[bool, typer.Option("--utc", help="Times in UTC (default: local time).")]

GAP = 3
"""Spaces between two columns (a space of padding each side and the box's divider)."""


@dataclass(frozen=True)
class Column:
    """One column of a listing: the row's key, its heading, how to show a value."""

    key: str
    header: str
    priority: int = 1
    """0: never dropped; the highest numbers go first when the table is too wide."""
    show: Callable[[Any], str] = str
    flexible: bool = False
    """Free text given what is left of the width (at least :data:`FLEXIBLE_MIN`),
    elided with "…" beyond it (whole with ``--wide``)."""


FLEXIBLE_MIN = 16


def fit(
    title: str | None,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    *,
    width: int,
    wide: bool = False,
) -> tuple[Table, int]:
    """The table of ``rows`` in the columns that fit ``width`` (all of them when
    ``wide``), and the width it needs (print it at least that wide)."""
    cells = [[_cell(column, row) for column in columns] for row in rows]
    natural = [
        max([len(column.header), *(len(line) for r in cells for line in r[i].splitlines())])
        for i, column in enumerate(columns)
    ]
    kept = list(range(len(columns)))
    if not wide:
        by_priority = sorted(kept, key=lambda i: (-columns[i].priority, -i))
        for i in by_priority:
            if _needed(kept, natural, columns) <= width or columns[i].priority == 0:
                break
            kept.remove(i)
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
        header_style="bold",
    )
    spare = max(width - _needed(kept, natural, columns), 0)
    for i in kept:
        column = columns[i]
        if column.flexible and not wide:  # What is left of the width; the rest elided.
            room = min(natural[i], FLEXIBLE_MIN + spare)
            table.add_column(column.header, no_wrap=True, overflow="ellipsis", max_width=room)
        else:
            table.add_column(column.header, no_wrap=True, min_width=natural[i])
    for row_cells in cells:
        table.add_row(*(row_cells[i] for i in kept))
    return table, _needed(kept, natural, columns)


def _needed(kept: list[int], natural: list[int], columns: Sequence[Column]) -> int:
    widths = [min(natural[i], FLEXIBLE_MIN) if columns[i].flexible else natural[i] for i in kept]
    return sum(widths) + GAP * max(len(kept) - 1, 0)


def _cell(column: Column, row: dict[str, Any]) -> str:
    value = row.get(column.key)
    return "" if value is None or value == "" else column.show(value)


def phase_name(value: Any) -> str:
    """``EXECUTION_IN_PROGRESS`` -> ``IN_PROGRESS``."""
    return str(value).removeprefix("EXECUTION_")


def when(value: Any, utc: bool = False) -> str:
    """A time to the second: local (``2026-12-03 13:39:25``) or UTC (``...Z``)."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if utc:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def timer(utc: bool) -> Callable[[Any], str]:
    """:func:`when` in the zone chosen (for a :class:`Column`)."""
    return lambda value: when(value, utc)


def duration(milliseconds: float) -> str:
    """``36 ms``, ``2.8 s``, ``1 min 50 s``, ``2 h 5 min``."""
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def counts(values: dict[str, int]) -> str:
    """``{'delivered': 2, 'rejected': 1}`` -> ``delivered 2, rejected 1`` (``none``)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "none"
