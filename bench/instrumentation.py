"""The cost of instrumentation: lifecycles per second with metrics and tracing on,
beside the same ledger without them, in one run (target: at least 0.95).

Three ledgers on PostgreSQL, each in a fresh schema, with the one-round-trip recorder
and the writer cache (as ``open_ledger`` sets them up), run the lifecycle of
``bench/lifecycles.py`` (create, three status updates, complete) in interleaved
slices so that all see the same load:

- ``off``: no instrumentation;
- ``metrics``: :func:`ledger.observability.commands.instrument_commands` with no
  tracer provider: counters and histograms, tracing off (what ``ledger serve`` does
  when no exporter endpoint is configured);
- ``metrics + spans``: the same with an OpenTelemetry SDK tracer provider and no
  exporter: every command's span is built and ended, then dropped;
- ``off, again``: a second uninstrumented ledger, whose ratio to the first shows how
  far this machine's load moves two identical variants apart.

Then the CPU each adds to one command, measured around a stand-in ledger whose
commands return at once: a figure a loaded machine barely moves, unlike the ratios.

    .venv/bin/python bench/instrumentation.py [--seconds N] [--threads 4] [--url URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from lifecycles import (  # noqa: E402
    DEFAULT_URL,
    FAST_ENV,
    compare,
    ledger_config,
    ledger_lifecycle,
    new_resource,
    schemas,
)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from ledger.application import open_ledger, open_ledger_with  # noqa: E402
from ledger.observability.commands import instrument_commands  # noqa: E402
from ledger.observability.tracing import TRACEPARENT  # noqa: E402

OFF = "off"
OFF_AGAIN = "off, again (the noise floor)"
METRICS = "metrics (tracing off)"
SPANS = "metrics + spans (no exporter)"


def added_cpu_per_command(calls: int = 50_000, rounds: int = 5) -> dict[str, float]:
    """Microseconds of CPU each variant adds to one command: the instrumentation
    around a stand-in ledger whose commands return a recorded execution at once
    (with a recorded trace context), best of ``rounds``. A loaded machine blurs the
    ratios above; this figure it barely moves."""
    ledger = open_ledger("memory://")
    resource = new_resource()
    resource.metadata.annotations[TRACEPARENT] = (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    record = ledger.create(resource)
    ledger.close()

    class StandIn:
        def save(self, *objs: object) -> list[object]:
            return []

        def update_status(self, execution_id: str, patch: object) -> object:
            return record

        create = complete = fail = cancel = update = delete = update_status
        record_cancel_request = record_caller_gone = update_status

    def per_call(target: Any) -> float:
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(calls):
                target.update_status("aex-x", None)
            best = min(best, (time.process_time() - started) / calls * 1e6)
        return best

    bare = per_call(StandIn())
    return {
        OFF: 0.0,
        OFF_AGAIN: 0.0,
        METRICS: per_call(instrument_commands(StandIn())) - bare,
        SPANS: per_call(instrument_commands(StandIn(), tracer_provider=TracerProvider())) - bare,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0, help="per variant (default 15)")
    parser.add_argument("--threads", type=int, default=1, help="threads per variant (default 1)")
    parser.add_argument("--slices", type=int, default=15, help="interleaved slices (default 15)")
    parser.add_argument("--url", default=os.environ.get("LEDGER_BENCH_POSTGRES", DEFAULT_URL))
    args = parser.parse_args(argv)
    base = "bench_" + uuid.uuid4().hex[:8]
    names = [base + "_off", base + "_metrics", base + "_spans", base + "_off2"]
    with schemas(args.url, names):
        ledgers = [
            open_ledger_with(ledger_config(args.url, name, FAST_ENV, fast=True)) for name in names
        ]
        try:
            instrument_commands(ledgers[1])
            instrument_commands(ledgers[2], tracer_provider=TracerProvider())
            results = compare(
                {
                    OFF: [ledger_lifecycle(ledgers[0]) for _ in range(args.threads)],
                    METRICS: [ledger_lifecycle(ledgers[1]) for _ in range(args.threads)],
                    SPANS: [ledger_lifecycle(ledgers[2]) for _ in range(args.threads)],
                    OFF_AGAIN: [ledger_lifecycle(ledgers[3]) for _ in range(args.threads)],
                },
                args.seconds,
                args.slices,
            )
        finally:
            for ledger in ledgers:
                ledger.close()
    cpu = added_cpu_per_command()
    baseline = results[OFF].per_second
    load = os.getloadavg()[0]
    print(f"instrumentation cost, {args.threads} thread(s), load average {load:.1f}")
    print(
        f"{'variant':<32} {'lifecycles/s':>13} {'ms/command':>11} {'vs off':>7} "
        f"{'added CPU us/command':>21}"
    )
    for name, result in results.items():
        print(
            f"{name:<32} {result.per_second:>13.1f} {result.ms_per_command:>11.3f} "
            f"{result.per_second / baseline:>7.2f} {cpu[name]:>21.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
