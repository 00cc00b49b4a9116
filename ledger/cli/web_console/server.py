"""The console's HTTP server: routes, token authentication, and the live stream.

One :class:`ConsoleServer` serves the pages of :mod:`~ledger.cli.web_console.pages` from a
:class:`~projections.views.Views` of its own (the status and audit views, the lag,
and the ledger for one execution's history), with the standard library's threading
HTTP server. ``/live`` is a server-sent-events stream that says ``change`` whenever
the ledger's log, the dispatcher's log or the views moved; the page's script then
fetches its main part again (``?fragment=main``).

Bound to a loopback address it needs no token. Bound elsewhere it needs the tokens
file of ``ledger serve``: a browser signs in once with its token (kept in an
HttpOnly, SameSite=Strict cookie; never in a page), a script may send
``Authorization: Bearer``. Every token may read; a writer token (or anyone, on a
loopback address without tokens) may also ask for a retry of the parked callbacks
(``POST /callbacks/retry-parked``): the console records the request and the active
dispatcher answers it (:mod:`projections.dispatch.retry_requests`); and start a
blue/green rebuild of a view (``POST /projections/rebuild``), which runs in a thread
of the console (:mod:`~ledger.cli.web_console.rebuilds`) while the projections page shows its
progress. A reader's POST is refused with 403, and so is a POST from another site
(its ``Origin``).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ledger.cli.grpc_server.auth import Authenticator, Role, TokenEntry, read_tokens
from ledger.cli.web_console import pages
from ledger.cli.web_console.charts import charts
from ledger.cli.web_console.rebuilds import Rebuilds
from ledger.contract.errors import ConfigurationError, LedgerError
from ledger.store.url import StoreConfig
from projections.dispatch.leadership import active_holder
from projections.dispatch.retry_requests import RetryRequests
from projections.views import VIEW_NAMES, Views

logger = logging.getLogger(__name__)

COOKIE = "ledger_console"
LIVE_INTERVAL = 0.5
"""Seconds between two looks at the logs for the live stream."""
MAX_FORM_BYTES = 8192


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """The console on ``address`` until :meth:`close`."""

    def __init__(
        self,
        config: StoreConfig,
        address: tuple[str, int],
        *,
        tokens: Path | None = None,
        temporal_ui: str | None = None,
        namespace: str = "default",
        follow_views: bool = True,
    ) -> None:
        host, _ = address
        if tokens is None and not is_loopback(host):
            raise ConfigurationError(
                f"the console on {host} (not a loopback address) needs --tokens FILE"
            )
        self.authenticator = Authenticator(read_tokens(tokens)) if tokens is not None else None
        self.temporal_ui = temporal_ui
        self.namespace = namespace
        self.config = config
        self.views = Views(config)
        self.retry_requests = RetryRequests(config)
        self.rebuilds = Rebuilds(config, self.views)
        self._lock = threading.Lock()
        """One store read at a time (the views' connections are shared)."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if follow_views:
            follower = threading.Thread(
                target=self._follow, name="ledger-console-views", daemon=True
            )
            follower.start()
            self._threads.append(follower)
        console = self

        class _Handler(_RequestHandler):
            server_console = console

        self._http = ThreadingHTTPServer(address, _Handler)
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        serving = threading.Thread(
            target=self._http.serve_forever, name="ledger-console", daemon=True
        )
        serving.start()

    def _follow(self) -> None:
        try:
            self.views.run(self._stop, ["status", "audit"])
        except Exception:
            logger.exception("the console's view followers stopped; pages may lag")

    def read(self, fn: Callable[[Views], Any]) -> Any:
        with self._lock:
            return fn(self.views)

    def dispatcher(self) -> str | None:
        """Who the active dispatcher is (None: none runs), or why it is not known."""
        try:
            return active_holder(self.config, "dispatcher")
        except Exception as e:  # The store away: the page says so rather than fail.
            return f"not known ({e})"

    def signature(self) -> tuple[int, ...]:
        """What the live stream compares: the logs' heads and the views' positions."""

        def look(views: Views) -> tuple[int, ...]:
            return (
                self.rebuilds.changes,
                *(g.position for g in views.lag()),
                views.ledger.recorder.max_notification_id() or 0,
                views.dispatcher_log.recorder.max_notification_id() or 0,
            )

        return tuple(self.read(look))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        self.rebuilds.close()
        for thread in self._threads:
            thread.join(timeout=30)
        self.views.close()


class _RequestHandler(BaseHTTPRequestHandler):
    server_console: ConsoleServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # No access log (a query string could name anything).

    # Authentication.

    def _who(self) -> TokenEntry | bool | None:
        """The token's entry; True when no authentication is needed; None: refused."""
        authenticator = self.server_console.authenticator
        if authenticator is None:
            return True
        metadata: list[tuple[str, str | bytes]] = []
        header = self.headers.get("Authorization")
        if header:
            metadata.append(("authorization", header))
        jar = cookies.SimpleCookie(self.headers.get("Cookie", ""))
        if COOKIE in jar:
            metadata.append(("authorization", f"Bearer {jar[COOKIE].value}"))
        return authenticator.identify(metadata)

    # Routes.

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/login":
            self._page(pages.login(), "")
            return
        who = self._who()
        if who is None:
            if url.path == "/live":
                self._send(401, "text/plain", b"sign in first\n")
            else:
                self._redirect("/login")
            return
        if url.path == "/live":
            self._live(query.get("since"))
            return
        shown = "" if who is True else f"signed in: {who.name} ({who.role.value})"  # type: ignore[union-attr]
        since = ""
        try:
            if query.get("fragment") != "main":
                # Taken before the page is read: a change after it (before the page's
                # live stream starts) is then told at once, not missed.
                since = _signature_text(self.server_console.signature())
            status, page = self._route(url.path, query, who)
        except LedgerError as e:
            status, page = 503, pages.not_found(f"the store could not be read: {e}")
        if query.get("fragment") == "main":
            self._send(status, "text/html; charset=utf-8", page.main.encode())
        else:
            self._page(page, shown, status, since=since)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/callbacks/retry-parked":
            self._retry_parked()
            return
        if path == "/projections/rebuild":
            self._rebuild()
            return
        if path != "/login":
            self._send(404, "text/plain", b"not found\n")
            return
        length = min(int(self.headers.get("Content-Length") or 0), MAX_FORM_BYTES)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[-1].strip()
        authenticator = self.server_console.authenticator
        if authenticator is None:
            self._redirect("/")
            return
        if authenticator.identify([("authorization", f"Bearer {token}")]) is None:
            self._page(pages.login("That token is not known."), "", 401)
            return
        jar = cookies.SimpleCookie()
        jar[COOKIE] = token
        jar[COOKIE]["httponly"] = True
        jar[COOKIE]["samesite"] = "Strict"
        jar[COOKIE]["path"] = "/"
        self._redirect("/", cookie=jar[COOKIE].OutputString())

    def _route(
        self, path: str, query: dict[str, str], who: TokenEntry | bool
    ) -> tuple[int, pages.Page]:
        console = self.server_console
        if path == "/":
            holder = console.dispatcher()
            return 200, console.read(
                lambda v: pages.overview(
                    v.status.counts_by_phase(),
                    v.lag(),
                    v.audit.outcome_counts(),
                    holder,
                    charts(v, datetime.now(UTC)),
                )
            )
        if path == "/executions":
            return self._executions(query)
        if path.startswith("/executions/"):
            return self._execution(unquote(path[len("/executions/") :]))
        if path == "/callbacks":
            return 200, console.read(
                lambda v: pages.callbacks(
                    v.audit.pending(limit=200),
                    v.audit.outcome_counts(),
                    can_retry=_may_act(who),
                    request=console.retry_requests.latest(),
                    dispatcher=console.dispatcher(),
                )
            )
        if path == "/projections":
            refused = query.get("refused")
            states = console.rebuilds.states()
            return 200, console.read(
                lambda v: pages.projections(
                    v.lag(),
                    views=VIEW_NAMES,
                    stale=v.stale(),
                    dead_letters=Counter(d.follower.partition("<-")[0] for d in v.dead_letters()),
                    rebuilds=states,
                    can_rebuild=_may_act(who),
                    refused=console.rebuilds.refusal(refused) if refused else None,
                )
            )
        return 404, pages.not_found(f"no page at {path}")

    def _executions(self, query: dict[str, str]) -> tuple[int, pages.Page]:
        filters = {k: query.get(k, "").strip() for k in ("kind", "phase", "label", "since")}
        options: dict[str, Any] = {"limit": 50, "after": query.get("after") or None}
        if filters["kind"]:
            options["kind"] = filters["kind"]
        if filters["phase"]:
            options["phase"] = filters["phase"]
        try:
            if filters["label"]:
                key, sep, value = filters["label"].partition("=")
                if not sep or not key:
                    raise ValueError("a label filter is key=value")
                options["label"] = (key, value)
            if filters["since"]:
                since = datetime.fromisoformat(filters["since"])
                options["since"] = since if since.tzinfo else since.replace(tzinfo=UTC)
            rows, cursor = self.server_console.read(lambda v: v.status.list(**options))
        except ValueError as e:
            page = pages.executions([], filters, None)
            return 400, pages.Page(page.title, page.section, f"<p role=alert>{e}</p>{page.main}")
        return 200, pages.executions(rows, filters, cursor)

    def _execution(self, execution_id: str) -> tuple[int, pages.Page]:
        console = self.server_console

        def load(views: Views) -> pages.Page:
            record = views.ledger.read(execution_id)
            return pages.execution(
                record.resource,
                record.version,
                views.ledger.history(execution_id),
                views.audit.get(execution_id),
                console.temporal_ui,
                console.namespace,
            )

        try:
            return 200, console.read(load)
        except LedgerError as e:
            return 404, pages.not_found(str(e))

    def _acting(self, what: str) -> TokenEntry | bool | None:
        """Who sends this POST, when they may act; None when refused (answered here):
        not signed in (401), from another site (403), a reader (403)."""
        who = self._who()
        if who is None:
            self._send(401, "text/plain", b"sign in first\n")
            return None
        origin = self.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != self.headers.get("Host"):
            self._send(403, "text/plain", b"a request from another site\n")
            return None
        if not _may_act(who):
            self._send(403, "text/plain", f"a reader token may not {what}\n".encode())
            return None
        return who

    def _form(self) -> dict[str, str]:
        """The POST's form fields (the body read up to MAX_FORM_BYTES), last value each."""
        length = min(int(self.headers.get("Content-Length") or 0), MAX_FORM_BYTES)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        return {k: v[-1] for k, v in form.items()}

    def _retry_parked(self) -> None:
        """Records a request to retry the parked callbacks (a writer only), then
        back to the callbacks page, which tells how the request fares."""
        self._form()
        who = self._acting("retry callbacks")
        if who is None:
            return
        by = "console" if who is True else who.name  # type: ignore[union-attr]
        try:
            self.server_console.retry_requests.request(by)
        except Exception as e:  # The store away, or a role without the right: say so.
            logger.warning("console: a retry request could not be recorded: %s", e)
            self._page(pages.not_found(f"the request could not be recorded: {e}"), "", 503)
            return
        self._redirect("/callbacks")

    def _rebuild(self) -> None:
        """Starts a blue/green rebuild of the form's view (a writer only), then back to
        the projections page, which shows its progress, or the one line saying why it
        did not start (already being rebuilt, here or by another process)."""
        form = self._form()
        who = self._acting("rebuild views")
        if who is None:
            return
        name = form.get("view", "")
        by = "console" if who is True else who.name  # type: ignore[union-attr]
        try:
            refused = self.server_console.rebuilds.start(
                name, by, stop_on_error=bool(form.get("stop_on_error"))
            )
        except ValueError as e:
            self._send(400, "text/plain", f"{e}\n".encode())
            return
        if refused is not None:
            self._redirect(f"/projections?{urlencode({'refused': name})}")
            return
        self._redirect("/projections")

    # The live stream.

    def _live(self, since: str | None) -> None:
        """Says ``change`` whenever the signature moves; from ``since`` (the one its
        page was rendered at) when given, so a change in between is told at once."""
        console = self.server_console
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        last = console.signature()
        changed_meanwhile = since is not None and since != _signature_text(last)
        quiet_since = time.monotonic()
        try:
            self.wfile.write(b"retry: 2000\n\n")
            if changed_meanwhile:
                self.wfile.write(b"event: change\ndata: %d\n\n" % last[-2])
            self.wfile.flush()
            while not console.stopping:
                time.sleep(LIVE_INTERVAL)
                now = console.signature()
                if now != last:
                    last = now
                    self.wfile.write(b"event: change\ndata: %d\n\n" % now[-2])
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 15:
                    self.wfile.write(b": still here\n\n")  # Finds a closed connection.
                    self.wfile.flush()
                    quiet_since = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            return
        except LedgerError as e:
            logger.warning("console live stream: %s", e)

    # Answers.

    def _page(self, page: pages.Page, who: str, status: int = 200, *, since: str = "") -> None:
        body = pages.document(page, who=who, since=since).encode()
        self._send(status, "text/html; charset=utf-8", body)

    def _redirect(self, location: str, *, cookie: str | None = None) -> None:
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        )
        self.end_headers()
        self.wfile.write(body)


def _signature_text(signature: tuple[int, ...]) -> str:
    """A signature as it travels in a page and back in ``/live?since=``."""
    return ".".join(str(n) for n in signature)


def _may_act(who: TokenEntry | bool) -> bool:
    """Whether ``who`` may act: a writer token, or anyone when no token is needed."""
    return who is True or (isinstance(who, TokenEntry) and who.role is Role.WRITER)
