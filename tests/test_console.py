"""The operator console in a real browser: Debian's Chromium, headless, driven by
Playwright (pointed at ``/usr/bin/chromium``: nothing is downloaded).

``ledger console`` runs as a process of its own on PostgreSQL, with a tokens file; the
browser signs in with a reader token, watches executions created through the API
appear without a reload, opens one and reads its timeline and callback story, sees a
callback parked after Temporal went away (a real dispatcher, a real dev server
killed), cannot retry it (no button, and the server refuses the POST), reads the
charts (the commands chart counts the test's events) and the projections, and cannot
rebuild a view (no button, a 403); once Temporal is back a writer retries it from the
page and the running dispatcher takes the request: it leaves the parked list without
a reload. The writer then rebuilds the status view from the projections page (the
progress reaches done, the rows are still there), sees a rebuild asked elsewhere
progress live, a rebuild held off by another process's lock refused in one line, and
one stopped by a poisoned event fail in one line; a POST from another site is
refused. Each page is saved as a screenshot under the test's directory, and no
page's HTML holds a whole token.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.application import open_ledger
from ledger.cli.grpc_server.auth import Role, add_token
from ledger.contract.kinds import AgentExecution, AgentExecutionSpec, AgentExecutionStatus
from ledger.contract.names import CREATED_TOPICS
from ledger.contract.phases import Phase
from ledger.store.url import parse_url
from projections.views import Views
from tests.support.processes import kill_all, python_process, stop_process
from tests.support.servers import TemporalDevServer, temporal_cli_path
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 60_000


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    kill_all(started)


def _browser_path() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        pytest.fail("Debian's chromium is required: apt-get install chromium (.ci/run does)")
    return found


def _console_port(log: Path) -> int:
    def port() -> int | None:
        found = re.search(r"console on http://[^:]+:(\d+)/", log.read_text(errors="replace"))
        return int(found[1]) if found else None

    wait_for(lambda: port() is not None, message=lambda: "the console: " + log.read_text())
    value = port()
    assert value is not None
    return value


def test_console_in_a_real_browser(
    pg_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    from playwright.sync_api import sync_playwright

    screens = tmp_path / "screenshots"
    screens.mkdir()
    tokens = tmp_path / "tokens.txt"
    reader = add_token(tokens, "dashboard", Role.READER)
    writer = add_token(tokens, "operator", Role.WRITER)
    temporal = TemporalDevServer(
        temporal_cli_path(), tmp_path / "temporal.db", tmp_path / "temporal.log"
    )
    temporal.start()
    ledger = open_ledger(pg_url)
    env = {"LEDGER_URL": pg_url, "TEMPORAL_ADDRESS": temporal.address}
    console_log = tmp_path / "console.log"
    processes.append(
        python_process(
            ["-m", "ledger", "console", "--address", "127.0.0.1:0", "--tokens", str(tokens)],
            env,
            console_log,
        )
    )
    processes.append(
        python_process(["-m", "ledger", "dispatcher", "run"], env, tmp_path / "dispatcher.log")
    )
    base = f"http://127.0.0.1:{_console_port(console_log)}"
    token = b"\x0a\x24" + b"caller-task-token-" * 4
    whole = base64.b64encode(token).decode()
    pages_html: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=_browser_path(), args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)

            def shot(name: str) -> None:
                page.screenshot(path=str(screens / f"{name}.png"), full_page=True)
                pages_html.append(page.content())

            # Not signed in: the sign-in page; a wrong token is refused.
            page.goto(f"{base}/executions")
            assert page.url.endswith("/login")
            page.fill("#token", "not-a-token")
            page.click("button[type=submit]")
            page.wait_for_selector("text=That token is not known.")
            page.fill("#token", reader)
            page.click("button[type=submit]")
            page.wait_for_selector("h1:text('Overview')")
            assert "dashboard (reader)" in page.inner_text("header")
            shot("overview")

            # Executions appear without a reload.
            page.goto(f"{base}/executions")
            page.wait_for_selector("#live:text('live')")
            page.evaluate("window.__notReloaded = true")
            created = ledger.create(
                AgentExecution(
                    spec=AgentExecutionSpec(agent_id="agent-7", message="go", callback_token=token)
                )
            )
            page.wait_for_selector(f"a:text('{created.id}')")
            assert page.evaluate("window.__notReloaded") is True
            shot("executions")

            # One execution: its timeline grows live, its callback story.
            ledger.update_status(created.id, AgentExecutionStatus(phase=Phase.IN_PROGRESS))  # type: ignore[arg-type]
            page.click(f"a:text('{created.id}')")
            page.wait_for_selector("h1:text('" + created.id + "')")
            page.evaluate("window.__notReloaded = true")
            ledger.complete(created.id, {"answer": 42})
            page.wait_for_selector("td:text-is('Completed')")
            assert page.evaluate("window.__notReloaded") is True
            timeline = page.inner_text("table:has(caption:text('Timeline'))")
            assert "Created" in timeline and "StatusChanged" in timeline
            assert '"answer": 42' in timeline
            shot("execution")

            # A callback parked once Temporal is gone.
            temporal.kill()
            parked = ledger.create(
                AgentExecution(
                    spec=AgentExecutionSpec(agent_id="agent-8", message="go", callback_token=token)
                )
            )
            ledger.complete(parked.id, {"answer": 43})
            page.goto(f"{base}/callbacks")
            page.wait_for_selector(f"tr:has(a:text('{parked.id}')) .parked:text('parked')")
            # A reader sees no retry, and the server refuses one.
            assert page.locator("#retry-parked").count() == 0
            refused = page.request.post(f"{base}/callbacks/retry-parked")
            assert refused.status == 403
            assert "#retry-state" not in page.content()
            shot("callbacks")
            page.goto(f"{base}/")
            page.wait_for_selector("#parked:text-is('1')")  # Live: the audit view catches up.
            assert "server process" in page.inner_text("#dispatcher")  # The dispatcher's lock.
            # The charts count what happened this hour: 2 created, 2 completed.
            # (Waited for, live: the status view may follow a moment behind the audit.)
            page.wait_for_selector("svg[aria-label^='Executions created'][aria-label*=' 2 in ']")
            page.wait_for_selector("svg[aria-label^='Executions completed'][aria-label*=' 2 in ']")
            # Commands: every event the test's commands appended, counted in the hour.
            events = sum(len(ledger.history(i)) for i in (created.id, parked.id))
            assert events == 5  # Created, StatusChanged, Completed; Created, Completed.
            page.wait_for_selector(
                f"svg[aria-label^='Commands (events appended)'][aria-label*=' {events} in ']"
            )
            shot("overview-parked")

            page.goto(f"{base}/projections")
            lag = page.inner_text("table")
            assert "status<-Ledger" in lag and "dispatcher<-Ledger" in lag
            # A reader sees no rebuild, and the server refuses one.
            assert page.locator("form[action='/projections/rebuild']").count() == 0
            assert page.locator("#rebuild-status").count() == 0
            refused = page.request.post(f"{base}/projections/rebuild", form={"view": "status"})
            assert refused.status == 403
            shot("projections")

            # A phone's screen: the pages still read (the tables scroll, nothing hides).
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{base}/executions/{parked.id}")
            page.wait_for_selector("caption:text('Callback story')")
            shot("execution-phone")

            # Temporal is back: a writer retries the parked callback from the page; the
            # running dispatcher takes the request and it leaves the parked list.
            with ThreadPoolExecutor(1) as starting:  # Playwright's loop runs in this thread.
                starting.submit(temporal.start).result()
            operator = browser.new_page(viewport={"width": 1280, "height": 800})
            operator.set_default_timeout(TIMEOUT_MS)
            operator.goto(f"{base}/login")
            operator.fill("#token", writer)
            operator.click("button[type=submit]")
            operator.wait_for_selector("h1:text('Overview')")
            operator.goto(f"{base}/callbacks")
            operator.wait_for_selector(f"tr:has(a:text('{parked.id}')) .parked:text('parked')")
            operator.wait_for_selector("#live:text('live')")
            operator.click("#retry-parked")
            operator.wait_for_selector("#retry-state:has-text('operator')")
            operator.evaluate("window.__notReloaded = true")
            operator.wait_for_selector(
                f"tr:has(a:text('{parked.id}'))", state="detached", timeout=3 * TIMEOUT_MS
            )
            operator.wait_for_selector("#retry-state:has-text('done')", timeout=TIMEOUT_MS)
            assert "1 parked callbacks called again" in operator.inner_text("#retry-state")
            assert operator.evaluate("window.__notReloaded") is True
            pages_html.append(operator.content())
            operator.screenshot(path=str(screens / "callbacks-retried.png"), full_page=True)
            operator.goto(f"{base}/")
            operator.wait_for_selector(
                "svg[aria-label^='Callbacks answered'][aria-label*=' 2 in ']"
            )
            assert operator.inner_text("#parked") == "0"

            # A writer rebuilds the status view from the projections page.
            operator.goto(f"{base}/projections")
            operator.wait_for_selector("#live:text('live')")
            elsewhere = operator.request.post(
                f"{base}/projections/rebuild",
                form={"view": "status"},
                headers={"Origin": "http://elsewhere.example"},
            )
            assert elsewhere.status == 403  # A request from another site.
            assert "Not rebuilt from this console" in operator.inner_text("main")
            operator.click("#rebuild-status")
            operator.wait_for_selector("#rebuild-status-state:has-text('Rebuilt: done')")
            bar = operator.locator("progress#rebuild-status-progress")
            assert bar.get_attribute("value") == bar.get_attribute("max")
            assert int(bar.get_attribute("max") or 0) >= events
            assert operator.locator("label[for='rebuild-status-progress']").count() == 1
            pages_html.append(operator.content())
            operator.screenshot(path=str(screens / "projections-rebuilt.png"), full_page=True)
            # A rebuild asked elsewhere (another tab) shows here live, without a reload.
            operator.evaluate("window.__notReloaded = true")
            asked = operator.request.post(f"{base}/projections/rebuild", form={"view": "audit"})
            assert asked.ok
            operator.wait_for_selector("#rebuild-audit-state:has-text('Rebuilt: done')")
            assert operator.evaluate("window.__notReloaded") is True
            # The views answered from their rows throughout, and still have them.
            operator.goto(f"{base}/executions")
            for execution_id in (created.id, parked.id):
                operator.wait_for_selector(f"a:text('{execution_id}')")
            operator.goto(f"{base}/")
            operator.wait_for_selector(
                f"svg[aria-label^='Commands (events appended)'][aria-label*=' {events} in ']"
            )
            assert operator.inner_text("#parked") == "0"

            # Held off by another process's rebuild lock (as `ledger projections
            # rebuild` holds it): refused in one line, nothing started.
            with Views(parse_url(pg_url)) as other, other.rebuild_lock("status"):
                operator.goto(f"{base}/projections")
                operator.click("#rebuild-status")
                operator.wait_for_selector(
                    "#rebuild-refused:has-text('already being rebuilt by another process')"
                )
            # Stopped by a poisoned event ("stop on error"): one line, the old rows.
            ledger.recorder.insert_events(
                [StoredEvent("aex-poisoned", 1, CREATED_TOPICS[0], b"\xff not JSON")]
            )
            operator.goto(f"{base}/projections")
            operator.wait_for_selector(  # Live: the status follower made it a dead letter.
                "table:has(caption:text('dead letters')) tr:has(td:text-is('status')) "
                "td:text-is('1')"
            )
            operator.check("#rebuild-status-strict")
            operator.click("#rebuild-status")
            operator.wait_for_selector("#rebuild-status-state:has-text('Rebuild failed')")
            failed = operator.inner_text("#rebuild-status-state")
            assert "aex-poisoned" in failed and "stop on error" in failed
            assert "\n" not in failed
            pages_html.append(operator.content())
            operator.screenshot(path=str(screens / "projections-failed.png"), full_page=True)
            operator.goto(f"{base}/executions")
            for execution_id in (created.id, parked.id):
                operator.wait_for_selector(f"a:text('{execution_id}')")
            browser.close()
        for html in pages_html:
            assert whole not in html and whole[:24] not in html
            assert "caller-task-token" not in html
        assert len(list(screens.glob("*.png"))) == 10
        assert stop_process(processes[0]) == 0
    finally:
        ledger.close()
        temporal.stop()
