"""Metrics: each long-running process scraped over HTTP while it works.

``ledger serve``, ``ledger projections run`` and ``ledger dispatcher run`` are real
processes on PostgreSQL, with ``--metrics-address 127.0.0.1:0``; the tests scrape
their ``/metrics`` and check the figures against what they did: commands and gRPC
calls counted exactly, lag zero once caught up, deliveries by outcome, a parked
callback after Temporal went away, the dispatcher active, and Temporal's SDK metrics
beside the ledger's. No figure carries an execution id.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger.application import open_ledger
from ledger.contract.kinds import AgentExecution, AgentExecutionSpec
from tests.support.processes import LEDGER, kill_all, python_process, stop_process
from tests.support.scraping import metrics_port, scrape, scrape_text, value, wait_metrics_port
from tests.support.servers import TemporalDevServer, temporal_cli_path
from tests.support.waiting import wait_for
from tests.test_server import Served, agent, agent_patch, code_of

pytestmark = [pytest.mark.slow]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    kill_all(started)


def test_serve_counts_commands_events_and_grpc_calls(pg_url: str, tmp_path: Path) -> None:
    served = Served(pg_url, tmp_path, extra=("--metrics-address", "127.0.0.1:0")).start()
    try:
        wait_for(lambda: metrics_port("".join(served.lines)) is not None, message="metrics on")
        port = metrics_port("".join(served.lines))
        assert port is not None
        before = scrape(port)
        assert value(before, "ledger_commands_total", command="create", result="ok") == 0
        assert value(before, "ledger_store_up") == 1

        md = served.metadata()
        ids = [served.agent_command.create(agent(), metadata=md).metadata.id for _ in range(3)]
        for execution_id in ids:
            served.agent_command.updateStatus(agent_patch(execution_id, 2), metadata=md)
        served.agent_command.updateStatus(agent_patch(ids[0], 3), metadata=md)
        code, _ = code_of(
            served.agent_command.updateStatus, agent_patch("aex-missing", 2), metadata=md
        )
        assert code is grpc.StatusCode.NOT_FOUND

        after = scrape(port)
        assert value(after, "ledger_commands_total", command="create", result="ok") == 3
        assert value(after, "ledger_commands_total", command="update_status", result="ok") == 4
        assert (
            value(
                after,
                "ledger_commands_total",
                command="update_status",
                result="ExecutionNotFoundError",
            )
            == 1
        )
        assert value(after, "ledger_command_duration_seconds_count", command="create") == 3
        assert value(after, "ledger_events_appended_total", type="Created") == 3
        assert value(after, "ledger_events_appended_total", type="Completed") == 1
        service = "ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController"
        grpc_labels = {"grpc_type": "unary", "grpc_service": service}
        assert (
            value(
                after,
                "grpc_server_handled_total",
                grpc_method="create",
                grpc_code="OK",
                **grpc_labels,
            )
            == 3
        )
        assert (
            value(
                after,
                "grpc_server_handled_total",
                grpc_method="updateStatus",
                grpc_code="NOT_FOUND",
                **grpc_labels,
            )
            == 1
        )
        assert (
            value(after, "grpc_server_started_total", grpc_method="updateStatus", **grpc_labels)
            == 5
        )
        text = scrape_text(port)
        assert not any(execution_id in text for execution_id in ids)  # Never an id.
    finally:
        served.kill()


def _resource(token: bytes) -> AgentExecution:
    return AgentExecution(
        spec=AgentExecutionSpec(agent_id="agent-1", message="go", callback_token=token)
    )


@pytest.mark.temporal
def test_followers_dispatcher_and_parked_after_temporal_outage(
    pg_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    temporal = TemporalDevServer(
        temporal_cli_path(), tmp_path / "temporal.db", tmp_path / "temporal.log"
    )
    temporal.start()
    ledger = open_ledger(pg_url)
    try:
        views_log, dispatcher_log = tmp_path / "views.log", tmp_path / "dispatcher.log"
        env = {"LEDGER_URL": pg_url, "TEMPORAL_ADDRESS": temporal.address}
        metrics = ["--metrics-address", "127.0.0.1:0"]
        processes.append(
            python_process(["-m", "ledger", "projections", "run", *metrics], env, views_log)
        )
        processes.append(
            python_process(["-m", "ledger", "dispatcher", "run", *metrics], env, dispatcher_log)
        )
        views_port = wait_metrics_port(views_log)
        dispatcher_port = wait_metrics_port(dispatcher_log)
        wait_for(
            lambda: value(scrape(dispatcher_port), "ledger_dispatcher_active") == 1,
            message="the dispatcher active",
        )

        ids = []
        for _ in range(3):
            execution_id = ledger.create(_resource(b"")).id
            ledger.complete(execution_id, {"n": 1})
            ids.append(execution_id)
        wait_for(
            lambda: (
                value(scrape(dispatcher_port), "ledger_deliveries_total", outcome="no_callback")
                == 3
            ),
            message="three no_callback deliveries counted",
        )

        def caught_up() -> bool:
            s = scrape(views_port)
            head = value(s, "ledger_log_head", log="Ledger")
            return (
                head >= 6
                and value(s, "ledger_follower_position", follower="status<-Ledger") == head
                and value(s, "ledger_follower_lag_events", follower="status<-Ledger") == 0
                and value(s, "ledger_follower_lag_seconds", follower="status<-Ledger") == 0
                and value(s, "ledger_follower_lag_events", follower="dispatcher<-Ledger") == 0
                and value(s, "ledger_pending_deliveries") == 0
            )

        wait_for(caught_up, message="the views and the dispatcher caught up")
        samples = scrape(views_port)
        assert value(samples, "ledger_parked_deliveries") == 0
        assert value(samples, "ledger_oldest_parked_age_seconds") == 0

        dispatcher_text = scrape_text(dispatcher_port)
        assert "temporal_" in dispatcher_text  # The SDK's own metrics, beside the ledger's.

        temporal.kill()  # Temporal goes away: the next callback is retried, then parked.
        parked_id = ledger.create(_resource(b"\x0a\x24" + b"t" * 36)).id
        ledger.complete(parked_id, {"n": 2})
        wait_for(
            lambda: (
                value(scrape(dispatcher_port), "ledger_deliveries_total", outcome="parked") == 1
            ),
            timeout=120,
            message="the callback parked",
        )
        wait_for(
            lambda: value(scrape(views_port), "ledger_parked_deliveries") == 1,
            message="the parked callback in the audit view",
        )
        samples = scrape(views_port)
        assert value(samples, "ledger_oldest_parked_age_seconds") > 0
        dispatcher_samples = scrape(dispatcher_port)
        assert value(dispatcher_samples, "ledger_delivery_latency_seconds_count") == 1
        assert value(dispatcher_samples, "ledger_deliveries_in_flight") == 0
        for text in (scrape_text(views_port), scrape_text(dispatcher_port)):
            assert parked_id not in text and not any(i in text for i in ids)
        for process in processes:
            assert stop_process(process) == 0
    finally:
        ledger.close()
        temporal.stop()


def test_a_malformed_metrics_address_is_a_usage_error(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    for args in (
        ["projections", "run", "--url", url],
        ["dispatcher", "run", "--url", url],
        ["serve", "--url", url, "--no-auth"],
    ):
        done = subprocess.run(
            [LEDGER, *args, "--metrics-address", "nowhere"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: --metrics-address"), done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "ledger.db").exists()
