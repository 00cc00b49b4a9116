"""The ``--metrics-address`` endpoint: ``GET /metrics`` in Prometheus' text format.

One HTTP server in a thread of its own (the standard library's, as
``prometheus_client`` uses), serving the default registry and, after it, the text
of other exporters of the same process (Temporal's SDK runtime exports its own
metrics on an endpoint bound to 127.0.0.1, which this one reads and appends, so one
scrape target has them all). Anything but ``/metrics`` is 404.
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

logger = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (port 0: any free one) as (host, port); ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"a metrics address is host:port, not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def free_local_port() -> int:
    """A port free on 127.0.0.1 now (for an exporter that must be given one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MetricsServer:
    """``GET /metrics`` on ``address`` until :meth:`close`."""

    def __init__(self, address: str, *, also: Sequence[str] = ()) -> None:
        host, port = parse_address(address)
        self.also = list(also)
        """URLs of other exporters whose text is appended to each answer."""
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = server.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # No access log on stderr.

        self._http = ThreadingHTTPServer((host, port), _Handler)
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="ledger-metrics", daemon=True
        )
        self._thread.start()

    def render(self) -> bytes:
        """The registry's text, then each other exporter's (skipped while it fails)."""
        parts = [generate_latest(REGISTRY)]
        for url in self.also:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
                    parts.append(answer.read())
            except OSError as e:
                logger.debug("metrics of %s not read: %s", url, e)
        return b"".join(part if part.endswith(b"\n") else part + b"\n" for part in parts)

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
