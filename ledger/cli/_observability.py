"""``--metrics-address`` and tracing for the long-running commands (``serve``,
``dispatcher run``, ``projections run``).

:func:`observed` starts, for the command's whole run, the process's Prometheus
endpoint (the ledger's metrics, the store's state read at each scrape, and, for the
dispatcher, Temporal's SDK metrics: docs/METRICS.md) and its tracing
(:func:`~ledger.observability.tracing.configure_tracing`: off unless
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``LEDGER_TRACES_FILE`` is set).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from ledger.cli._input import UsageError
from ledger.store.url import StoreConfig

MetricsAddressOption = Annotated[
    str | None,
    typer.Option(
        "--metrics-address",
        help="host:port to serve Prometheus metrics on, at /metrics (port 0: any free "
        "one; docs/METRICS.md). Off by default.",
    ),
]


def check_metrics_address(address: str | None) -> None:
    """Refuses a malformed ``--metrics-address`` (a usage error) before anything starts."""
    if address is not None:
        from ledger.observability.exposition import parse_address

        try:
            parse_address(address)
        except ValueError as e:
            raise UsageError(f"--metrics-address: {e}") from None


@contextmanager
def observed(
    service: str, config: StoreConfig, metrics_address: str | None, *, temporal: bool = False
) -> Iterator[None]:
    """Metrics on ``metrics_address`` (when given) and tracing, for the block.

    Says ``metrics on http://HOST:PORT/metrics`` on stderr once the endpoint listens.
    ``temporal``: the process connects a Temporal client, whose SDK metrics are
    exported too (set up before it connects)."""
    # Imported here: every other command of the CLI starts without them.
    from ledger.observability.exposition import MetricsServer, parse_address
    from ledger.observability.tracing import configure_tracing, shutdown_tracing

    traced = configure_tracing(service)
    if metrics_address is None:
        try:
            yield
        finally:
            if traced:
                shutdown_tracing()
        return
    from prometheus_client import REGISTRY

    from projections.metrics import register_store_metrics

    also: list[str] = []
    if temporal:
        from ledger.temporal.telemetry import install_sdk_metrics

        also.append(install_sdk_metrics())
    collector = register_store_metrics(config)
    try:
        server = MetricsServer(metrics_address, also=also)
    except OSError as e:
        REGISTRY.unregister(collector)
        raise OSError(f"--metrics-address {metrics_address}: {e.strerror or e}") from None
    host = parse_address(metrics_address)[0]
    sys.stderr.write(f"metrics on http://{host}:{server.port}/metrics\n")
    sys.stderr.flush()
    try:
        yield
    finally:
        server.close()
        REGISTRY.unregister(collector)
        collector.close()
        if traced:
            shutdown_tracing()
