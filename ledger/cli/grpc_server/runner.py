"""``ledger serve``: builds the gRPC server, runs it, stops it gracefully.

grpcio's asyncio server, with the four execution controllers
(:mod:`ledger.cli.grpc_server.services`), the standard health service
(``grpc.health.v1.Health``: SERVING while up, NOT_SERVING while stopping) and
server reflection. Bearer-token authentication (:mod:`ledger.cli.grpc_server.auth`), TLS
and mutual TLS are options. SIGTERM or SIGINT stop it gracefully: health turns
NOT_SERVING, new calls are refused, open ``subscribe`` streams end with
``UNAVAILABLE`` (resume with ``x-from-version``), unary calls in flight finish
within the grace period.

The largest request accepted is the ledger's largest write (a status patch of
1 MiB, plus its envelope): anything larger is refused by gRPC with
``RESOURCE_EXHAUSTED`` before it is decoded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger.application import Ledger, open_ledger_with
from ledger.cli.grpc_server.auth import Authenticator, AuthInterceptor, read_tokens
from ledger.cli.grpc_server.core import Core
from ledger.cli.grpc_server.metrics import MetricsInterceptor
from ledger.cli.grpc_server.services import add_services
from ledger.cli.grpc_server.subscriptions import LogFollower
from ledger.contract.errors import ConfigurationError
from ledger.domain.validation import MAX_STATUS_PATCH_BYTES
from ledger.observability.commands import instrument_commands
from ledger.store.url import StoreConfig
from projections.views import Views, freeze_startup_objects

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = MAX_STATUS_PATCH_BYTES + 64 * 1024
"""The largest request: a status patch at the ledger's limit plus room for its envelope."""
GC_THRESHOLDS = (10_000, 10, 10)
"""The collector's thresholds while serving (Python's: 700, 10, 10). Garbage here is
nearly all freed by reference counting; each collection of the young generation
traverses what survived, and every tenth of the middle one may start a full
collection, which holds the event loop for tens of milliseconds with 1,000 streams open."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest answer (a resource whose status grew over many patches)."""


@dataclass(frozen=True)
class ServeOptions:
    """How ``ledger serve`` runs."""

    address: str = "127.0.0.1:50051"
    tokens: Path | None = None
    """The tokens file; None serves without authentication (``--no-auth`` only)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """Mutual TLS: clients must present a certificate signed by this CA."""
    grace: float = 10.0
    """Seconds unary calls in flight get to finish when stopping."""
    workers: int = 16
    """Threads for the ledger's blocking calls."""
    follow_views: bool = True
    """Keep the status view up to date in this process (for ``list``)."""


def _credentials(options: ServeOptions) -> grpc.ServerCredentials | None:
    if options.tls_cert is None and options.tls_key is None:
        if options.tls_client_ca is not None:
            raise ConfigurationError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise ConfigurationError("TLS needs both --tls-cert and --tls-key")
    try:
        cert = options.tls_cert.read_bytes()
        key = options.tls_key.read_bytes()
        ca = options.tls_client_ca.read_bytes() if options.tls_client_ca else None
    except OSError as e:
        raise ConfigurationError(f"cannot read a TLS file: {e}") from e
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class LedgerServer:
    """The server and everything it runs, from start to a graceful stop."""

    def __init__(self, config: StoreConfig, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        self.port = 0
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(options.workers, thread_name_prefix="ledger-serve")
        self._ledger: Ledger | None = None
        self._server: aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._background: list[Callable[[], None]] = []
        """What to stop or close when stopping, in reverse order."""
        self._follower: LogFollower | None = None

    @staticmethod
    def _run_views(views: Views) -> Callable[[], None]:
        """Keeps the status view up to date in a thread; returns what stops it."""
        stop = threading.Event()

        def follow() -> None:
            # Store errors are retried inside run(), undecodable events become dead
            # letters; anything else is logged and the follower starts again, with
            # backoff, from its recorded position (never left stopped: list would lag
            # for good, silently).
            backoff = 1.0
            while not stop.is_set():
                try:
                    views.run(stop, ["status"])
                    return
                except Exception:
                    logger.exception(
                        "the status view's follower stopped; list lags until it starts "
                        "again in %.0f s",
                        backoff,
                    )
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

        thread = threading.Thread(target=follow, name="ledger-serve-views", daemon=True)
        thread.start()

        def stop_views() -> None:
            stop.set()
            thread.join(timeout=30)

        return stop_views

    async def start(self) -> int:
        """Opens the ledger, binds the address, starts serving; returns the port."""
        options = self.options
        authenticator = (
            Authenticator(read_tokens(options.tokens)) if options.tokens is not None else None
        )
        credentials = _credentials(options)
        loop = asyncio.get_running_loop()
        self._ledger = ledger = await loop.run_in_executor(
            self._executor, open_ledger_with, self.config
        )
        instrument_commands(ledger)  # ledger_commands_total, spans (docs/METRICS.md).
        views = await loop.run_in_executor(self._executor, Views, self.config)
        self._background.append(views.close)
        if options.follow_views:
            self._background.append(self._run_views(views))
        follower = LogFollower(ledger, loop, poll_interval=0.5 if self.config.is_postgres else 0.1)
        await loop.run_in_executor(self._executor, follower.start)
        self._follower = follower
        self._background.append(follower.close)
        core = Core(
            ledger, self._executor, authenticator, follower=follower, status_view=views.status
        )
        server = aio.server(
            interceptors=[MetricsInterceptor()]
            + ([AuthInterceptor(authenticator)] if authenticator else []),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            ],
        )
        names = add_services(server, core)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        if credentials is None:
            port = server.add_insecure_port(options.address)
        else:
            port = server.add_secure_port(options.address, credentials)
        self._server = server
        await server.start()
        for name in ("", *names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # Full collections otherwise traverse every start-up object (~64,000) while they
        # hold the event loop: with 1,000 streams at load 10, full collections took
        # 87-196 ms, 67-80 ms with these frozen (README, Benchmarks).
        freeze_startup_objects()
        gc.set_threshold(*GC_THRESHOLDS)
        self.port = port
        return port

    async def wait(self) -> None:
        """Until :meth:`request_stop`."""
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Health NOT_SERVING, streams ended, calls in flight finished, store closed."""
        await self._health.enter_graceful_shutdown()
        if self._follower is not None:
            self._follower.close()  # Open streams end with UNAVAILABLE.
        if self._server is not None:
            await self._server.stop(self.options.grace)
        for stop in reversed(self._background):
            try:
                stop()
            except Exception:
                logger.exception("while stopping")
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._ledger is not None:
            self._ledger.close()


async def serve(config: StoreConfig, options: ServeOptions, ready: Callable[[int], None]) -> None:
    """Runs the server until SIGTERM or SIGINT, then stops it gracefully."""
    server = LedgerServer(config, options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    try:
        port = await server.start()
        ready(port)
        await server.wait()
    finally:
        await server.stop()


def run(config: StoreConfig, options: ServeOptions) -> None:
    """``ledger serve``: serves until stopped; prints ``serving on HOST:PORT`` on stderr."""

    def ready(port: int) -> None:
        host = options.address.rsplit(":", 1)[0]
        sys.stderr.write(f"ledger serve: serving on {host}:{port}\n")
        sys.stderr.flush()

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("ledger serve runs in the main thread (it handles SIGTERM)")
    asyncio.run(serve(config, options, ready))
