"""Observability: Prometheus metrics, their HTTP endpoint, and OpenTelemetry traces.

The bottom of the layers (it imports nothing of the ledger), so that any layer can
count, time and trace with a one-line hook:

- :mod:`~ledger.observability.metrics`: every metric the ledger's processes export
  (names and meanings in docs/METRICS.md);
- :mod:`~ledger.observability.exposition`: the ``--metrics-address`` HTTP endpoint;
- :mod:`~ledger.observability.tracing`: spans, and the caller's trace context
  carried in an execution's annotations;
- :mod:`~ledger.observability.commands`: a ledger's commands counted, timed and traced.
"""
