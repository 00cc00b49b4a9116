"""``ledger dispatcher run|retry-parked|parked``: the completion dispatcher, which wakes each
completed execution's caller through Temporal (``TEMPORAL_*`` settings).

``run`` logs as set by ``--log-level`` and ``--log-format``
(:mod:`ledger.cli._logging`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ledger.cli._app import JsonOption, UrlOption, errors, store_config
from ledger.cli._input import DeadlineError, UsageError
from ledger.cli._logging import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    configure_logging,
)
from ledger.cli._observability import MetricsAddressOption, check_metrics_address, observed
from ledger.cli._render import out, print_json, print_table
from ledger.cli._tables import Column, counts, fit
from ledger.store.url import StoreConfig

dispatcher_app = typer.Typer(help="The completion dispatcher.", no_args_is_help=True)


TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.1,
        metavar="SECONDS",
        help="Give up after this long (an error, exit 1); default 600 s.",
    ),
]
DEFAULT_TIMEOUT = 600.0


@dispatcher_app.command("run")
def dispatcher_run(
    url: UrlOption = None,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up", help="Stop once every completion so far has its outcome."
        ),
    ] = False,
    start_at_head: Annotated[
        bool,
        typer.Option(
            "--start-at-head",
            help="On a FIRST start only: skip completions already in the ledger (their "
            "callers are never woken). Without it a first start begins at position zero.",
        ),
    ] = False,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Calls in flight at most.")] = 64,
    timeout: TimeoutOption = None,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
    as_json: JsonOption = False,
    metrics_address: MetricsAddressOption = None,
) -> None:
    """Follow the ledger and wake each completed execution's caller (TEMPORAL_* settings).

    Runs until stopped (SIGINT/SIGTERM); while Temporal is down it waits, saying so.
    --until-caught-up: stop once every completion so far has its outcome (or fail at --timeout).
    """
    import asyncio

    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import run_dispatcher

    if timeout is not None and not until_caught_up:
        with errors():
            raise UsageError("--timeout is for --until-caught-up (a run follows until stopped)")
    with errors():
        check_metrics_address(metrics_address)
    status_line = configure_logging(log_level, LogFormat.JSON if as_json else log_format)
    deadline = (timeout or DEFAULT_TIMEOUT) if until_caught_up else None
    with errors(), observed("ledger-dispatcher", store_config(url), metrics_address, temporal=True):
        try:
            stats = asyncio.run(
                asyncio.wait_for(
                    run_dispatcher(
                        store_config(url),
                        TemporalSettings.from_env(),
                        until_caught_up=until_caught_up,
                        start_at_head=start_at_head,
                        max_in_flight=max_in_flight,
                    ),
                    deadline,
                )
            )
        except TimeoutError:
            raise DeadlineError(
                f"not caught up within {deadline:g} s (is Temporal reachable at "
                f"{TemporalSettings.from_env().address}?); the next run carries on"
            ) from None
    status_line(f"dispatcher stopped: outcomes {counts(stats.outcomes)}; skipped {stats.skipped}")


@dispatcher_app.command("retry-parked")
def dispatcher_retry_parked(
    url: UrlOption = None, timeout: TimeoutOption = None, as_json: JsonOption = False
) -> None:
    """Retry every parked delivery now. With none parked it does not connect to Temporal."""
    import asyncio

    from ledger.temporal.settings import TemporalSettings
    from projections.dispatch.dispatcher import Dispatcher, connect_client

    config = store_config(url)
    settings = TemporalSettings.from_env()
    deadline = timeout or DEFAULT_TIMEOUT

    async def retry() -> tuple[int, dict[str, int]]:
        if not await asyncio.to_thread(_waiting_deliveries, config):
            return 0, {}
        client = await connect_client(settings)
        dispatcher = Dispatcher(config, client)
        try:
            count = await dispatcher.retry_parked()
            return count, dispatcher.stats.outcomes
        finally:
            await asyncio.to_thread(dispatcher.close)

    with errors():
        try:
            count, outcomes = asyncio.run(asyncio.wait_for(retry(), deadline))
        except TimeoutError:
            raise DeadlineError(
                f"gave up after {deadline:g} s (is Temporal reachable at {settings.address}?); "
                "deliveries not retried stay parked"
            ) from None
    if as_json:
        print_json({"retried": count, "outcomes": outcomes})
    elif count == 0:
        out.print("nothing parked: no delivery to retry")
    else:
        out.print(f"retried {count} parked deliveries: {counts(outcomes)}", highlight=False)


@dispatcher_app.command("parked")
def dispatcher_parked(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List the parked deliveries, each with why it was parked (poisoned: the
    execution cannot be read; retries_exhausted: Temporal kept failing)."""
    from pathlib import Path

    from eventsourcing.persistence import ProgrammingError

    from ledger.store.connections import check_store_exists, setup_lock
    from projections.dispatch.delivery import Outcome
    from projections.dispatch.log import DispatcherLog

    rows: list[dict[str, object]] = []
    with errors():
        config = store_config(url)
        check_store_exists(config)
        # A read: the dispatcher's tables are never created here (none yet: none parked).
        env = {**config.component_env("dispatcher"), "CREATE_TABLE": "n"}
        if not config.is_sqlite or Path(env["SQLITE_DBNAME"]).exists():
            with setup_lock(config):
                log = DispatcherLog(env)
            try:
                parked = log.deliveries_in(Outcome.PARKED)
            except ProgrammingError as e:
                if "does not exist" not in str(e):
                    raise
                parked = []  # No dispatcher ever ran on this store.
            finally:
                log.close()
            rows = [
                {
                    "execution_id": d.id,
                    "reason": d.parked_reason,
                    "attempts": d.attempts,
                    "detail": d.detail[:200],
                }
                for d in parked
            ]
    if as_json:
        print_json(rows)
    else:
        columns = [
            Column("execution_id", "execution", 0),
            Column("reason", "reason", 0),
            Column("attempts", "attempts", 2),
            Column("detail", "detail", 1, flexible=True),
        ]
        title = "parked deliveries" if rows else "no delivery parked"
        print_table(*fit(title, rows, columns, width=out.width))


def _waiting_deliveries(config: StoreConfig) -> int:
    """How many deliveries a retry would call (parked, or cut off while retried)."""
    from ledger.store.connections import setup_lock
    from projections.dispatch.log import DispatcherLog

    with setup_lock(config):
        log = DispatcherLog(config.component_env("dispatcher"))
    try:
        return len(log.deliveries_to_retry(log.position() or 0))
    finally:
        log.close()
