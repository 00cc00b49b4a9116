"""``ledger serve`` and ``ledger token``: the platform's execution controllers over gRPC.

Registers its commands on the CLI's Typer ``app`` (:mod:`ledger.cli._app`);
:mod:`ledger.cli` imports this module so they are there. The server itself is
:mod:`ledger.cli.grpc_server`; docs/GRPC.md shows it at work with grpcurl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ledger.cli._app import UrlOption, app
from ledger.cli._input import UsageError
from ledger.cli._observability import MetricsAddressOption, check_metrics_address, observed
from ledger.contract.errors import ConfigurationError, LedgerError

token_app = typer.Typer(help="Bearer tokens of `ledger serve`.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _fail(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    url: UrlOption = None,
    address: Annotated[
        str, typer.Option("--address", help="host:port to listen on (port 0: any free one).")
    ] = "127.0.0.1:50051",
    tokens: Annotated[
        Path | None,
        typer.Option("--tokens", help="File of hashed bearer tokens (see `ledger token add`)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without authentication (tests, local use).")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", help="Mutual TLS: PEM CA that signs client certificates."),
    ] = None,
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds calls in flight get when stopping.")
    ] = 10.0,
    workers: Annotated[
        int, typer.Option("--workers", help="Threads for the store's blocking calls.")
    ] = 16,
    views: Annotated[
        bool,
        typer.Option(
            "--views/--no-views",
            help="Keep the status view up to date here (for list); --no-views when "
            "`ledger projections run` runs elsewhere.",
        ),
    ] = True,
    metrics_address: MetricsAddressOption = None,
) -> None:
    """Serve the platform's AgentExecution and WorkflowExecution controllers over gRPC.

    Needs --tokens FILE (bearer tokens) or --no-auth. SIGTERM stops gracefully.
    """
    from ledger.cli.grpc_server import ServeOptions, run
    from ledger.store.url import parse_url

    if tokens is None and not no_auth:
        _fail("give --tokens FILE (see `ledger token add`), or --no-auth to serve without")
    if tokens is not None and no_auth:
        _fail("--tokens and --no-auth exclude each other")
    if workers < 1:
        _fail("--workers must be at least 1")
    try:
        check_metrics_address(metrics_address)
    except UsageError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    options = ServeOptions(
        address=address,
        tokens=tokens,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        grace=grace,
        workers=workers,
        follow_views=views,
    )
    try:
        config = parse_url(url)
        with observed("ledger-serve", config, metrics_address):
            run(config, options)
    except (LedgerError, OSError, RuntimeError) as e:
        _fail(str(e))


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="Who the token is for (recorded as the actor).")],
    file: Annotated[Path, typer.Option("--file", help="The tokens file (created if missing).")],
    role: Annotated[
        str, typer.Option("--role", help="reader (queries) or writer (everything).")
    ] = "writer",
) -> None:
    """Add a token: prints it once; the file keeps only its SHA-256."""
    from ledger.cli.grpc_server.auth import Role, add_token

    try:
        chosen = Role(role)
    except ValueError:
        _fail(f"--role must be reader or writer, not {role!r}")
        return
    try:
        token = add_token(file, name, chosen)
    except (ConfigurationError, OSError) as e:
        _fail(str(e))
        return
    typer.echo(token)
    typer.echo(f"token {name!r} ({chosen.value}) added to {file}; it is shown only now", err=True)
