"""The console's pages as HTML: overview, executions, one execution, callbacks, projections.

Every value is escaped; a callback token shows as 20 characters and a length and a
secret value as ``***`` (:mod:`ledger.domain.redaction`), so no page ever holds a
whole token. The layout is plain semantic HTML with one stylesheet (readable
contrast, visible focus, a table that scrolls on a phone); the script only asks the
server for the page's main part again when the log, the views or a rebuild moved
(keeping the boxes ticked and the focus where they were).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ledger.application import HistoryEntry
from ledger.contract.names import (
    CALLER_GONE_AT,
    CALLER_GONE_REASON,
    CALLER_RUN_ID,
    CALLER_WORKFLOW_ID,
    CANCEL_REQUESTED_AT,
    CANCEL_REQUESTED_BY,
)
from ledger.domain.redaction import display_dict, redact_token

STYLE = """
:root{color-scheme:light;font-family:system-ui,sans-serif;color:#1b1b1b;background:#fff}
body{margin:0}header{background:#0b3d91;color:#fff;padding:.5rem 1rem}
header a{color:#fff;margin-right:1rem;font-weight:600}
header a[aria-current]{text-decoration:underline}
main{padding:1rem;max-width:80rem}a{color:#0b3d91}
:focus-visible{outline:3px solid #c75000;outline-offset:2px}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #8a8a8a;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#e8ecf4}pre{background:#f3f3f3;padding:.5rem;overflow-x:auto;max-width:100%}
form.filters label{margin-right:.75rem}.parked{color:#a00000;font-weight:600}
.live{font-size:.85rem;color:#fff}
h1{overflow-wrap:anywhere}main{box-sizing:border-box}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
.charts{display:flex;flex-wrap:wrap;gap:1rem}figure.chart{margin:0;max-width:15rem}
figure.chart svg{background:#f3f6fb}figcaption{font-size:.85rem}
progress{width:14rem;max-width:100%;height:1.1rem;vertical-align:middle;accent-color:#0b3d91}
section{margin-bottom:1rem}button{font-size:1rem;padding:.25rem .75rem}
"""

SCRIPT = """
(function(){
  if(!window.EventSource){return;}
  var live=document.getElementById('live');
  var since=live?live.getAttribute('data-since'):'';
  var source=new EventSource('/live'+(since?'?since='+encodeURIComponent(since):''));
  source.addEventListener('change',function(){
    var url=new URL(window.location.href);url.searchParams.set('fragment','main');
    fetch(url,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null;})
      .then(function(html){
        if(html===null){return;}
        var main=document.getElementById('main'),kept={};
        var focused=document.activeElement&&document.activeElement.id;
        main.querySelectorAll('input[type=checkbox][id]').forEach(function(b){
          kept[b.id]=b.checked;});
        main.innerHTML=html;
        Object.keys(kept).forEach(function(id){
          var b=document.getElementById(id);if(b){b.checked=kept[id];}});
        if(focused){var f=document.getElementById(focused);if(f){f.focus();}}
        if(live){live.textContent='updated '+new Date().toLocaleTimeString();}
      });
  });
  if(live){live.textContent='live';}
})();
"""

NAV = [
    ("/", "Overview"),
    ("/executions", "Executions"),
    ("/callbacks", "Callbacks"),
    ("/projections", "Projections"),
]


@dataclass(frozen=True)
class Page:
    """A page: its title, the path of its section, and its main part's HTML."""

    title: str
    section: str
    main: str


def document(page: Page, *, who: str, since: str = "") -> str:
    """The whole HTML document of ``page``; ``since``: the live stream's signature
    when the page was read (its stream tells a change after it at once)."""
    current = ' aria-current="page"'
    links = " ".join(
        f'<a href="{href}"{current if href == page.section else ""}>{escape(label)}</a>'
        for href, label in NAV
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(page.title)} · execution ledger</title><style>{STYLE}</style></head>"
        f'<body><header><nav aria-label="Sections">{links}</nav>'
        f'<span class="live" id="live" role="status" aria-live="polite"'
        f' data-since="{escape(since)}"></span>'
        f'<span class="live"> {escape(who)}</span></header>'
        f'<main id="main">{page.main}</main><script>{SCRIPT}</script></body></html>'
    )


def _table(caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return (
        f'<div class="scroll"><table><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _facts(caption: str, rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table of named facts (already-escaped values), a header per row."""
    body = "".join(f'<tr><th scope="row">{escape(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return (
        f'<div class="scroll"><table><caption>{escape(caption)}</caption>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _when(moment: datetime | None) -> str:
    return escape(moment.isoformat(timespec="milliseconds")) if moment else ""


def _link(execution_id: str) -> str:
    return f'<a href="/executions/{quote(execution_id)}">{escape(execution_id)}</a>'


def lag_table(lags: Sequence[Any]) -> str:
    return _table(
        "Followers: position against the head of the log they follow",
        ["follower", "position", "head", "lag (events)"],
        [[escape(g.name), str(g.position), str(g.head), str(g.lag)] for g in lags],
    )


def overview(
    counts: Mapping[str, int],
    lags: Sequence[Any],
    outcomes: Mapping[str, int],
    dispatcher: str | None = None,
    charts: str = "",
) -> Page:
    phases = _table(
        "Executions by phase",
        ["phase", "executions"],
        [[escape(p), str(n)] for p, n in sorted(counts.items())],
    )
    parked = outcomes.get("parked", 0)
    callbacks = (
        f'<p>Callbacks pending: <strong id="pending">{outcomes.get("pending", 0)}</strong>; '
        f'parked: <strong id="parked" class="{"parked" if parked else ""}">{parked}</strong> '
        '(<a href="/callbacks">see them</a>).</p>'
    )
    main = f"<h1>Overview</h1>{phases}{callbacks}{_dispatcher(dispatcher)}{charts}{lag_table(lags)}"
    return Page("Overview", "/", main)


def _dispatcher(holder: str | None) -> str:
    """The active dispatcher (the holder of its single-active lock), or none."""
    if holder:
        return f'<p>Active dispatcher: <strong id="dispatcher">{escape(holder)}</strong>.</p>'
    return (
        '<p>Active dispatcher: <strong id="dispatcher" class="parked">none</strong>: '
        "completed executions wait, no caller is woken (start "
        "<code>ledger dispatcher run</code>).</p>"
    )


def executions(rows: Sequence[Any], filters: Mapping[str, str], next_cursor: str | None) -> Page:
    form = (
        '<form class="filters" method="get" action="/executions">'
        + "".join(
            f'<label>{escape(label)} <input name="{name}" value="{escape(filters.get(name, ""))}">'
            "</label>"
            for name, label in (
                ("kind", "Kind"),
                ("phase", "Phase"),
                ("label", "Label key=value"),
                ("since", "Created since (ISO)"),
            )
        )
        + '<button type="submit">Filter</button></form>'
    )
    table = _table(
        "Executions, newest first",
        ["id", "kind", "phase", "agent / workflow", "created", "updated", "version"],
        [
            [
                _link(r.id),
                escape(r.kind),
                escape(r.phase),
                escape(r.agent_id or r.workflow_id or ""),
                _when(r.created_at),
                _when(r.updated_at),
                str(r.version),
            ]
            for r in rows
        ],
    )
    more = ""
    if next_cursor:
        query = urlencode({**{k: v for k, v in filters.items() if v}, "after": next_cursor})
        more = f'<p><a href="/executions?{escape(query)}">Next page</a></p>'
    return Page("Executions", "/executions", f"<h1>Executions</h1>{form}{table}{more}")


def _summary(entry: HistoryEntry) -> str:
    event: Any = entry.event
    shown: dict[str, Any] = {}
    if entry.type == "Created":
        shown["callback_token"] = redact_token(bytes(event.spec.callback_token))
    elif entry.type == "StatusChanged":
        patch = display_dict(event.patch)
        patch.pop("phase", None)
        shown = patch
    elif entry.type == "Completed":
        for name in ("output", "error", "reason"):
            value = getattr(event, name, None)
            if value:
                shown[name] = value
    return (
        escape(json.dumps(shown, default=str, sort_keys=True, ensure_ascii=False)) if shown else ""
    )


def execution(
    resource: Any,
    version: int,
    history: Sequence[HistoryEntry],
    audit: Any,
    temporal_ui: str | None,
    namespace: str,
) -> Page:
    execution_id = resource.metadata.id
    shown = display_dict(resource)
    spec = escape(json.dumps(shown.get("spec", {}), indent=2, sort_keys=True, ensure_ascii=False))
    status = shown.get("status", {})
    status.pop("audit", None)
    status_text = escape(json.dumps(status, indent=2, sort_keys=True, default=str))
    timeline_rows = []
    previous: datetime | None = None
    for entry in history:
        gap = f"+{(entry.recorded_at - previous).total_seconds():.3f}s" if previous else ""
        previous = entry.recorded_at
        timeline_rows.append(
            [
                str(entry.version),
                _when(entry.recorded_at),
                escape(gap),
                escape(entry.type),
                escape(entry.phase.proto_name),
                _summary(entry),
            ]
        )
    timeline = _table(
        "Timeline: every event",
        ["version", "recorded at", "since previous", "event", "phase after", "what"],
        timeline_rows,
    )
    annotations = resource.metadata.annotations
    story = [
        ("outcome", escape(audit.outcome) if audit else "pending (not completed yet)"),
        ("attempts", str(audit.attempts) if audit else "0"),
        ("outcome recorded at", _when(audit.delivered_at) if audit else ""),
        (
            "latency",
            f"{audit.latency_ms:.0f} ms" if audit and audit.latency_ms is not None else "",
        ),
        ("cancel requested", escape(annotations.get(CANCEL_REQUESTED_AT, ""))),
        ("cancel requested by", escape(annotations.get(CANCEL_REQUESTED_BY, ""))),
        ("caller gone", escape(annotations.get(CALLER_GONE_AT, ""))),
        ("caller gone because", escape(annotations.get(CALLER_GONE_REASON, ""))),
    ]
    workflow_id = annotations.get(CALLER_WORKFLOW_ID, "")
    if workflow_id:
        caller = escape(workflow_id)
        if temporal_ui:
            run_id = annotations.get(CALLER_RUN_ID, "")
            url = (
                f"{temporal_ui.rstrip('/')}/namespaces/{quote(namespace)}/workflows/"
                f"{quote(workflow_id)}/{quote(run_id)}/history"
            )
            caller = f'<a href="{escape(url)}">{caller}</a>'
        story.append(("caller's workflow", caller))
    main = (
        f"<h1>{escape(execution_id)}</h1>"
        f"<p>{escape(resource.kind or '')} · phase <strong>"
        f"{escape(str(shown.get('status', {}).get('phase', 'EXECUTION_PENDING')))}"
        f"</strong> · version {version}</p>"
        + _facts("Callback story", story)
        + timeline
        + f"<h2>Spec</h2><pre>{spec}</pre><h2>Status</h2><pre>{status_text}</pre>"
    )
    return Page(execution_id, "/executions", main)


def callbacks(
    rows: Sequence[Any],
    outcomes: Mapping[str, int],
    *,
    can_retry: bool = False,
    request: Any = None,
    dispatcher: str | None = None,
    now: datetime | None = None,
) -> Page:
    counts = _table(
        "Callbacks by outcome",
        ["outcome", "executions"],
        [[escape(k), str(v)] for k, v in sorted(outcomes.items())],
    )
    pending = _table(
        "Pending and parked callbacks, oldest completion first",
        ["execution", "phase", "completed at", "outcome", "attempts"],
        [
            [
                _link(r.execution_id),
                escape(r.phase),
                _when(r.completed_at),
                f'<span class="{"parked" if r.outcome == "parked" else ""}">'
                f"{escape(r.outcome)}</span>",
                str(r.attempts),
            ]
            for r in rows
        ],
    )
    note = (
        "<p>A parked callback is retried by <code>ledger dispatcher retry-parked</code>, "
        "when the dispatcher next starts, or from here by a writer.</p>"
    )
    retry = (
        '<form method="post" action="/callbacks/retry-parked">'
        '<button type="submit" id="retry-parked">Retry parked</button></form>'
        if can_retry
        else ""
    )
    main = (
        f"<h1>Callbacks</h1>{counts}{pending}{retry}{_retry_state(request, dispatcher, now)}{note}"
    )
    return Page("Callbacks", "/callbacks", main)


WAITING_AFTER = 10.0
"""Seconds after which an open retry request is said to wait for a dispatcher."""


def _retry_state(request: Any, dispatcher: str | None, now: datetime | None) -> str:
    """How the last retry request fares (a :class:`RetryRequest` or None)."""
    if request is None:
        return ""
    asked = f"Retry asked by {escape(request.requested_by)} at {_when(request.requested_at)}"
    if request.done_at is not None:
        text = (
            f"{asked}: done at {_when(request.done_at)}, "
            f"{request.retried} parked callbacks called again."
        )
    else:
        now = now or datetime.now(UTC)
        waited = (now - request.requested_at).total_seconds()
        text = f"{asked}: waiting for the active dispatcher to take it"
        if dispatcher is None:
            text += (
                " (no dispatcher runs now: the request waits for one, "
                "<code>ledger dispatcher run</code>)"
            )
        elif waited > WAITING_AFTER:
            text += (
                f" (none has for {waited:.0f} s: is a dispatcher running? "
                "The request waits for one: <code>ledger dispatcher run</code>)"
            )
        text += "."
    return f'<p id="retry-state" role="status">{text}</p>'


def projections(
    lags: Sequence[Any],
    *,
    views: Sequence[str] = (),
    stale: Sequence[str] = (),
    dead_letters: Mapping[str, int] | None = None,
    rebuilds: Mapping[str, Any] | None = None,
    can_rebuild: bool = False,
    refused: str | None = None,
    now: datetime | None = None,
) -> Page:
    """Positions and lag; per view its schema state, dead letters, and its rebuild:
    the last one asked here (a :class:`~ledger.cli.web_console.rebuilds.RebuildState`) with
    its progress, and for a writer a button starting one."""
    dead = dead_letters or {}
    state = _table(
        "Views: schema and dead letters",
        ["view", "schema", "dead letters"],
        [
            [
                escape(name),
                '<span class="parked">stale: rebuild it</span>' if name in stale else "current",
                str(dead.get(name, 0)),
            ]
            for name in views
        ],
    )
    alert = (
        f'<p role="alert" id="rebuild-refused" class="parked">Not started: {escape(refused)}</p>'
        if refused
        else ""
    )
    sections = "".join(
        _rebuild_section(name, (rebuilds or {}).get(name), can_rebuild, now or datetime.now(UTC))
        for name in views
    )
    note = (
        "<p>A rebuild replays the logs from position zero into tables beside the live "
        "view and swaps them in, in one transaction, once caught up: until then the view "
        "answers from its old rows, and a failed rebuild leaves them as they were. It "
        "never calls Temporal. From a shell: <code>ledger projections rebuild NAME</code>"
        " (one rebuild of a view at a time, wherever it was started).</p>"
    )
    main = f"<h1>Projections</h1>{lag_table(lags)}{state}<h2>Rebuilds</h2>{alert}{note}{sections}"
    return Page("Projections", "/projections", main)


def _rebuild_section(name: str, state: Any, can_rebuild: bool, now: datetime) -> str:
    """One view's rebuild: its last state here, and the form (a writer only)."""
    title = f'<h3 id="rebuild-{name}-title">The {escape(name)} view</h3>'
    form = ""
    if can_rebuild:
        form = (
            f'<form method="post" action="/projections/rebuild" '
            f'aria-labelledby="rebuild-{name}-title">'
            f'<input type="hidden" name="view" value="{escape(name)}">'
            f'<label><input type="checkbox" id="rebuild-{name}-strict" name="stop_on_error" '
            'value="1"> Stop at an event '
            "that cannot be read (otherwise it becomes a dead letter)</label> "
            f'<button type="submit" id="rebuild-{name}">Rebuild {escape(name)}</button></form>'
        )
    state_html = _rebuild_state(state, now)
    return f'<section aria-labelledby="rebuild-{name}-title">{title}{state_html}{form}</section>'


def _rebuild_state(state: Any, now: datetime) -> str:
    """How the last rebuild asked here fares: a progress bar (indeterminate until its
    first page) with its text, or how it ended."""
    if state is None:
        return "<p>Not rebuilt from this console since it started.</p>"
    name = escape(state.view)
    asked = f"asked by {escape(state.requested_by)} at {_when(state.started_at)}"
    if state.error is not None:
        return (
            f'<p id="rebuild-{name}-state" role="alert" class="parked">Rebuild failed at '
            f"{_when(state.finished_at)} ({asked}): {escape(state.error)}. The view answers "
            "from its old rows.</p>"
        )
    total = state.total or 0
    done = min(state.done, total)
    if not state.running:
        done = total = max(total, 1)
    percent = 100 * done // total if total else 0
    if state.running:
        elapsed = (now - state.started_at).total_seconds()
        reached = f"{done:,} of {total:,} log positions ({percent}%)" if total else "starting"
        if total and done == total:
            reached += ", swapping in"
        text = f"Rebuilding: {reached}; {asked}, {elapsed:.0f} s ago."
    else:
        took = (state.finished_at - state.started_at).total_seconds()
        text = (
            f"Rebuilt: done at {_when(state.finished_at)}, {state.events or 0:,} events "
            f"in {took:.1f} s ({asked}); the rebuilt view is live."
        )
    value = f' value="{done}"' if total else ""  # No value: indeterminate.
    return (
        f'<p><label for="rebuild-{name}-progress">Rebuild of {name}</label> '
        f'<progress id="rebuild-{name}-progress" max="{max(total, 1)}"{value}>'
        f"{percent}%</progress> "
        f'<span id="rebuild-{name}-state" role="status">{text}</span></p>'
    )


def login(message: str = "") -> Page:
    alert = f'<p role="alert">{escape(message)}</p>' if message else ""
    form = (
        '<form method="post" action="/login"><label for="token">Bearer token</label> '
        '<input id="token" name="token" type="password" autocomplete="off" required> '
        '<button type="submit">Sign in</button></form>'
    )
    return Page("Sign in", "/login", f"<h1>Sign in</h1>{alert}{form}")


def not_found(what: str) -> Page:
    return Page("Not found", "/", f"<h1>Not found</h1><p>{escape(what)}</p>")
