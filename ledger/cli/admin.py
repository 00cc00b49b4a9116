"""Administration commands: setup (schema), roles (least-privilege SQL), keygen
(an encryption key) and the registration of ``demo`` (run by :mod:`ledger.cli.demo`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ledger.application import open_ledger_with
from ledger.cli._app import JsonOption, UrlOption, app, errors, store_config
from ledger.cli._input import InputError
from ledger.cli._render import err, out, print_json
from ledger.store.url import StoreConfig


@app.command()
def setup(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Create the schema, tables and functions of the ledger, dispatcher and views.

    Run once as the schema's owner; runtime roles then need no CREATE rights
    (see `ledger roles`).
    """
    from projections.dispatch.log import DispatcherLog
    from projections.dispatch.retry_requests import RetryRequests
    from projections.views import Views

    with errors():
        config = store_config(url)
        for closable in (
            open_ledger_with(config, cache=False),
            _with_lock(config, lambda: DispatcherLog(config.component_env("dispatcher"))),
            _with_lock(config, lambda: Views(config)),
        ):
            closable.close()
        RetryRequests(config).create()
    if as_json:
        print_json({"url": config.redacted_url, "set_up": True})
    else:
        out.print(f"set up {config.redacted_url}", highlight=False)


def _with_lock(config: StoreConfig, make: Callable[[], Any]) -> Any:
    from ledger.store.connections import setup_lock

    with setup_lock(config):
        return make()


@app.command()
def roles(
    url: UrlOption = None,
    prefix: Annotated[str, typer.Option(help="Role name prefix.")] = "ledger",
    as_json: JsonOption = False,
) -> None:
    """Print the SQL granting least-privilege roles (writer, follower, reader).

    Run it as the owner after `ledger setup`, e.g. `ledger roles | psql ...`.
    """
    from ledger.store.roles import roles_sql

    with errors():
        config = store_config(url)
        if not config.is_postgres:
            raise InputError("roles are for PostgreSQL: LEDGER_URL is not a postgresql:// URL")
        sql = roles_sql(config.env["POSTGRES_SCHEMA"], prefix)
    if as_json:
        print_json({"schema": config.env["POSTGRES_SCHEMA"], "prefix": prefix, "sql": sql})
    else:
        print(sql, end="")


@app.command()
def keygen(as_json: JsonOption = False) -> None:
    """Print a new AES key for LEDGER_CIPHER_KEY (encryption at rest)."""
    from eventsourcing.cipher import AESCipher

    key = AESCipher.create_key(32)
    if as_json:
        print_json({"key": key})
    else:
        print(key)


@app.command()
def demo(
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the demo's ledger and print commands to explore it."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the end-to-end demo on SQLite and a local Temporal dev server."""
    from ledger.cli.demo import run_demo

    raise typer.Exit(run_demo(err if as_json else out, keep=keep, as_json=as_json))
