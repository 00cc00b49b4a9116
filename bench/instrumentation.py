"""The cost of instrumentation: lifecycles per second with metrics and tracing on,
beside the same ledger without them, in one run (target: at least 0.95).

One ledger on PostgreSQL, in a fresh schema, with the one-round-trip recorder and
the writer cache (as ``open_ledger`` sets them up), runs the lifecycle of
``bench/lifecycles.py`` (create, three status updates, complete) in interleaved
slices, its instrumentation switched at the start of each slice:

- ``off``: no instrumentation;
- ``metrics``: :func:`ledger.observability.commands.instrument_commands` with no
  tracer provider: counters and histograms, tracing off (what ``ledger serve`` does
  when no exporter endpoint is configured);
- ``metrics + spans``: the same with an OpenTelemetry SDK tracer provider and no
  exporter: every command's span is built and ended, then dropped;
- ``off, again``: no instrumentation again, in its own slices: its ratio to the
  first shows how far this machine's load moves two identical variants apart.

The same ledger for all four (its table, its cache, its connections): separate
ledgers in separate schemas differed by up to 7% with nothing to tell them apart.

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
from ledger.observability.commands import COMMAND_NAMES, instrument_commands  # noqa: E402
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


class _Switch:
    """Switches one ledger's instrumentation between the variants, at the first
    lifecycle of a slice (``compare`` runs one variant at a time)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.mode = OFF
        self.provider = TracerProvider()

    def lifecycle(self, mode: str) -> Any:
        run = ledger_lifecycle(self.ledger)

        def switched() -> None:
            if self.mode != mode:
                self.switch(mode)
            run()

        return switched

    def switch(self, mode: str) -> None:
        for name in (*COMMAND_NAMES, "save", "_ledger_instrumented"):
            self.ledger.__dict__.pop(name, None)  # Back to the class's own methods.
        if mode == METRICS:
            instrument_commands(self.ledger)
        elif mode == SPANS:
            instrument_commands(self.ledger, tracer_provider=self.provider)
        self.mode = mode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0, help="per variant (default 15)")
    parser.add_argument("--threads", type=int, default=1, help="threads per variant (default 1)")
    parser.add_argument("--slices", type=int, default=15, help="interleaved slices (default 15)")
    parser.add_argument("--url", default=os.environ.get("LEDGER_BENCH_POSTGRES", DEFAULT_URL))
    args = parser.parse_args(argv)
    schema = "bench_" + uuid.uuid4().hex[:8]
    with schemas(args.url, [schema]):
        ledger = open_ledger_with(ledger_config(args.url, schema, FAST_ENV, fast=True))
        try:
            switch = _Switch(ledger)
            results = compare(
                {
                    mode: [switch.lifecycle(mode) for _ in range(args.threads)]
                    for mode in (OFF, METRICS, SPANS, OFF_AGAIN)
                },
                args.seconds,
                args.slices,
            )
        finally:
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
