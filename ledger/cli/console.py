"""``ledger console``: the live operator console in the browser (:mod:`ledger.cli.web_console`).

Registers its command on the CLI's Typer ``app``; :mod:`ledger.cli` imports this
module so it is there.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from ledger.cli._app import UrlOption, app, errors, store_config
from ledger.cli._input import UsageError
from ledger.contract.errors import ConfigurationError


@app.command()
def console(
    url: UrlOption = None,
    address: Annotated[
        str,
        typer.Option("--address", help="host:port to serve on (port 0: any free one)."),
    ] = "127.0.0.1:8470",
    tokens: Annotated[
        Path | None,
        typer.Option(
            "--tokens", help="The tokens file of `ledger serve` (needed unless bound to loopback)."
        ),
    ] = None,
    temporal_ui: Annotated[
        str | None,
        typer.Option("--temporal-ui", help="The Temporal UI's address, to link callers."),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", help="The callers' Temporal namespace.")
    ] = "default",
    views: Annotated[
        bool,
        typer.Option(
            "--views/--no-views",
            help="Keep the views up to date here; --no-views when `ledger projections "
            "run` runs elsewhere.",
        ),
    ] = True,
) -> None:
    """Serve the operator console (overview, executions, callbacks, projections) until
    SIGTERM or Ctrl-C; prints ``console on http://HOST:PORT/`` on stderr."""
    from ledger.cli.web_console.server import ConsoleServer
    from ledger.observability.exposition import parse_address

    with errors():
        try:
            bound = parse_address(address)
        except ValueError as e:
            raise UsageError(f"--address: {e}") from None
        config = store_config(url)
        if config.scheme == "memory":
            raise ConfigurationError("the console needs a SQLite or PostgreSQL store")
        server = ConsoleServer(
            config,
            bound,
            tokens=tokens,
            temporal_ui=temporal_ui,
            namespace=namespace,
            follow_views=views,
        )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sys.stderr.write(f"console on http://{bound[0]}:{server.port}/\n")
    sys.stderr.flush()
    try:
        stop.wait()
    finally:
        server.close()
