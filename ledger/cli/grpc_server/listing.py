"""``list``, ``listBySession`` and ``listByWorkflow``: pages of the status view.

Executions are listed newest first from the status view (:mod:`projections.views`),
which a server keeps up to date itself (``ledger serve``, unless ``--no-views``:
then ``ledger projections run`` must run beside it). The view lags the ledger by a
moment: an execution just created may not be listed yet. Each entry is then read
from the ledger, so it is the execution's current resource; an execution deleted
meanwhile is left out.

Filters: ``phase`` and ``tags`` (labels: ``key=value``, or ``key`` for any
value; all must match). The first ``key=value`` tag rides the view's label
index; any other tag, and the session or workflow of the ``listBy...`` calls, are
checked row by row (a session is not a column of the view, so ``listBySession``
reads each agent execution it passes: it costs as much as the executions
scanned).

Pages: ``page_token`` is a page number in text (``""`` or ``"1"`` is the first;
page N skips the N-1 pages before it, which costs as much as reading them), or
the opaque cursor the previous page returned in the trailing metadata
``x-next-page-token`` (absent after the last page), which continues exactly
after it whatever was created meanwhile. ``total_pages`` counts the executions
that match, at the requested page size; it is read from the view, so it may
still count executions deleted since, and executions created since the cursor
was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.application import ExecutionRecord, Ledger
from ledger.contract.errors import ExecutionNotFoundError, InvalidResourceError
from ledger.contract.kinds import Kind, Resource
from ledger.contract.phases import Phase

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_SCAN = 1000
"""Rows read per query of the view while counting or skipping."""

RowFilter = Callable[[Any], bool]
ResourceFilter = Callable[[Resource], bool]


@dataclass(frozen=True)
class Page:
    """One page of a listing."""

    entries: list[ExecutionRecord]
    total_pages: int
    next_token: str | None


@dataclass(frozen=True)
class Query:
    """What a listing asks for."""

    kind: Kind
    phase: int = 0
    tags: Sequence[str] = ()
    page_size: int = 0
    page_token: str = ""
    row_filter: RowFilter | None = None
    """A check on the view's row (``ExecutionRow``), beyond phase and tags."""
    resource_filter: ResourceFilter | None = None
    """A check on the execution's resource (costs a read of each row passed)."""


def _invalid(message: str, field: str) -> InvalidResourceError:
    return InvalidResourceError(message, field=field)


def _tags(tags: Sequence[str]) -> tuple[tuple[str, str] | None, list[RowFilter]]:
    """The label for the view's index (the first ``key=value``) and the other checks."""
    indexed: tuple[str, str] | None = None
    checks: list[RowFilter] = []
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not key:
            raise _invalid(f"tags: {tag!r} is not 'key=value' or 'key'", "tags")
        if equals and indexed is None:
            indexed = (key, value)
        elif equals:
            checks.append(_has_label(key, value))
        else:
            checks.append(_has_label(key, None))
    return indexed, checks


def _has_label(key: str, value: str | None) -> RowFilter:
    """A check of a row's labels: ``key`` set (to ``value``, unless None)."""

    def check(row: Any) -> bool:
        labels: dict[str, str] = row.labels
        return key in labels if value is None else labels.get(key) == value

    return check


class Lister:
    """Pages of executions of one query, from the status view and the ledger."""

    def __init__(self, status_view: Any, ledger: Ledger, query: Query) -> None:
        self._view = status_view
        self._ledger = ledger
        self._query = query
        if query.phase:
            try:
                self._phase: str | None = Phase(query.phase).proto_name
            except ValueError:
                raise _invalid(f"phase {query.phase} is not an ExecutionPhase", "phase") from None
        else:
            self._phase = None
        self._label, self._checks = _tags(query.tags)
        self._tag_checks = [
            *self._checks,
            *([_has_label(*self._label)] if self._label is not None else []),
        ]
        if query.row_filter is not None:
            self._checks.append(query.row_filter)
        size = query.page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise _invalid(f"page_size must be 0 (default) or more, not {size}", "page_size")
        self._size = min(size, MAX_PAGE_SIZE)

    def page(self) -> Page:
        """The page the query's token names."""
        token = self._query.page_token.strip()
        cursor: str | None = None
        if token.isdigit() or not token:
            number = int(token or "1")
            if number < 1:
                raise _invalid("page_token: pages are numbered from 1", "page_token")
            _, cursor, more = self._take((number - 1) * self._size, None, keep=False)
            entries: list[ExecutionRecord] = []
            if more:
                entries, cursor, more = self._take(self._size, cursor, keep=True)
        else:
            cursor = token
            entries, cursor, more = self._take(self._size, cursor, keep=True)
        return Page(entries, self._total_pages(), cursor if more else None)

    # Internals.

    def _rows(self, after: str | None, limit: int) -> tuple[list[Any], str | None]:
        try:
            rows, cursor = self._view.list(
                kind=self._query.kind.name,
                phase=self._phase,
                label=self._label,
                limit=limit,
                after=after,
            )
        except ValueError as e:
            raise _invalid(f"page_token: {e}", "page_token") from None
        return list(rows), cursor

    def _accepted(self, row: Any) -> ExecutionRecord | None:
        """The row's execution, if it passes every check and still exists."""
        if not all(check(row) for check in self._checks):
            return None
        try:
            record = self._ledger.read(row.id)
        except ExecutionNotFoundError:
            return None  # Deleted since.
        if self._tag_checks and not all(
            check(record.resource.metadata) for check in self._tag_checks
        ):
            return None  # Labels changed by an update since the view's row was made.
        check = self._query.resource_filter
        if check is not None and not check(record.resource):
            return None
        return record

    def _take(
        self, count: int, after: str | None, *, keep: bool
    ) -> tuple[list[ExecutionRecord], str | None, bool]:
        """The next ``count`` executions after the cursor ``after`` (kept only if
        ``keep``), the cursor after the last row read, and whether rows remain."""
        taken: list[ExecutionRecord] = []
        found = 0
        cursor = after
        while found < count:
            need = count - found
            limit = need if keep else min(max(need, 1), _SCAN)
            rows, next_cursor = self._rows(cursor, limit)
            for row in rows:
                record = self._accepted(row)
                if record is not None:
                    found += 1
                    if keep:
                        taken.append(record)
            if next_cursor is None:
                return taken, None, False
            cursor = next_cursor
        return taken, cursor, True

    def _total_pages(self) -> int:
        if not self._checks and self._label is None and self._query.resource_filter is None:
            counts = self._view.counts_by_phase(self._query.kind.name)
            total = int(counts.get(self._phase, 0) if self._phase else sum(counts.values()))
        else:
            total = sum(1 for _ in self._matching())
        return math.ceil(total / self._size)

    def _matching(self) -> Iterator[Any]:
        """Every row that matches (read from the view; for a resource filter, from the
        ledger too)."""
        cursor: str | None = None
        while True:
            rows, cursor = self._rows(cursor, _SCAN)
            for row in rows:
                if not all(check(row) for check in self._checks):
                    continue
                if self._query.resource_filter is not None and self._accepted(row) is None:
                    continue
                yield row
            if cursor is None:
                return
