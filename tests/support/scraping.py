"""Reading a process's Prometheus endpoint in tests: its address from its log, and
its figures as a dict."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_for

Sample = tuple[str, frozenset[tuple[str, str]]]


def metrics_port(text: str) -> int | None:
    """The port of ``metrics on http://HOST:PORT/metrics`` in a process's output."""
    found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", text)
    return int(found[1]) if found else None


def wait_metrics_port(log: Path, timeout: float = 60.0) -> int:
    """Waits until the process logging to ``log`` says where its metrics are."""
    wait_for(
        lambda: metrics_port(log.read_text(errors="replace")) is not None,
        timeout,
        message=lambda: "a metrics endpoint: " + log.read_text(errors="replace")[-2000:],
    )
    port = metrics_port(log.read_text(errors="replace"))
    assert port is not None
    return port


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return str(answer.read().decode())


def scrape(port: int) -> dict[Sample, float]:
    """Every sample of the endpoint: (name, labels) -> value."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as Prometheus treats a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
