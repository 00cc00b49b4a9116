"""Temporal's own SDK metrics (its client's requests, latencies, failures), beside the
ledger's on the same ``--metrics-address``.

:func:`install_sdk_metrics` makes the process's default Temporal runtime one that
exports the SDK's metrics with ``temporalio.runtime``'s Prometheus config, on an
endpoint bound to 127.0.0.1 at a free port; the ledger's metrics endpoint reads it
and appends its text (:class:`~ledger.observability.exposition.MetricsServer`'s
``also``). Call it before the first Temporal client is connected.
"""

from __future__ import annotations

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from ledger.observability.exposition import free_local_port


def install_sdk_metrics() -> str:
    """Sets the default runtime to one exporting the SDK's metrics (names prefixed
    ``temporal_``, durations in seconds); returns the URL to read them from."""
    address = f"127.0.0.1:{free_local_port()}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address,
                counters_total_suffix=True,
                unit_suffix=True,
                durations_as_seconds=True,
            )
        )
    )
    Runtime.set_default(runtime, error_if_already_set=False)
    return f"http://{address}/metrics"
