"""``ledger dispatcher run|retry-parked``: the completion dispatcher, which wakes each
completed execution's caller through Temporal (``TEMPORAL_*`` settings).

``run`` logs as set by ``--log-level`` and ``--log-format``
(:mod:`ledger.cli._logging`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ledger.cli._app import JsonOption, UrlOption, errors, store_config
from ledger.cli._logging import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    configure_logging,
)
from ledger.cli._observability import MetricsAddressOption, check_metrics_address, observed
from ledger.cli._render import out, print_json

dispatcher_app = typer.Typer(help="The completion dispatcher.", no_args_is_help=True)


@dispatcher_app.command("run")
def dispatcher_run(
    url: UrlOption = None,
    until_caught_up: Annotated[
        bool, typer.Option(help="Stop once every completion so far has its outcome.")
    ] = False,
    start_at_head: Annotated[
        bool,
        typer.Option(
            help="On a FIRST start only: skip completions already in the ledger (their "
            "callers are never woken). Without it a first start begins at position zero."
        ),
    ] = False,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Calls in flight at most.")] = 64,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
    metrics_address: MetricsAddressOption = None,
) -> None:
    """Follow the ledger and wake each completed execution's caller (TEMPORAL_* settings)."""
    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import run_dispatcher

    with errors():
        check_metrics_address(metrics_address)
    status_line = configure_logging(log_level, log_format)
    with errors(), observed("ledger-dispatcher", store_config(url), metrics_address, temporal=True):
        stats = asyncio.run(
            run_dispatcher(
                store_config(url),
                TemporalSettings.from_env(),
                until_caught_up=until_caught_up,
                start_at_head=start_at_head,
                max_in_flight=max_in_flight,
            )
        )
    status_line(f"dispatcher stopped: outcomes {stats.outcomes}, skipped {stats.skipped}")


@dispatcher_app.command("retry-parked")
def dispatcher_retry_parked(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Retry every parked delivery now."""
    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import Dispatcher, connect_client

    async def retry() -> tuple[int, dict[str, int]]:
        client = await connect_client(TemporalSettings.from_env())
        dispatcher = Dispatcher(store_config(url), client)
        try:
            count = await dispatcher.retry_parked()
            return count, dispatcher.stats.outcomes
        finally:
            await asyncio.to_thread(dispatcher.close)

    with errors():
        count, outcomes = asyncio.run(retry())
    if as_json:
        print_json({"retried": count, "outcomes": outcomes})
    else:
        out.print(f"retried {count} parked deliveries: {outcomes}")
