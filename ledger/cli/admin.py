"""Administration commands: setup (schema), roles (least-privilege SQL), keygen
(an encryption key) and the registration of ``demo`` (run by :mod:`ledger.cli.demo`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ledger.application import open_ledger_with
from ledger.cli._app import UrlOption, app, errors, store_config
from ledger.cli._input import InputError
from ledger.cli._render import out
from ledger.store.url import StoreConfig


@app.command()
def setup(url: UrlOption = None) -> None:
    """Create the schema, tables and functions of the ledger, dispatcher and views.

    Run once as the schema's owner; runtime roles then need no CREATE rights
    (see `ledger roles`).
    """
    from projections.dispatch.log import DispatcherLog
    from projections.views import Views

    with errors():
        config = store_config(url)
        for closable in (
            open_ledger_with(config, cache=False),
            _with_lock(config, lambda: DispatcherLog(config.component_env("dispatcher"))),
            _with_lock(config, lambda: Views(config)),
        ):
            closable.close()
    out.print(f"set up {config.redacted_url}")


def _with_lock(config: StoreConfig, make: Callable[[], Any]) -> Any:
    from ledger.store.connections import setup_lock

    with setup_lock(config):
        return make()


@app.command()
def roles(
    url: UrlOption = None,
    prefix: Annotated[str, typer.Option(help="Role name prefix.")] = "ledger",
) -> None:
    """Print the SQL granting least-privilege roles (writer, follower, reader).

    Run it as the owner after `ledger setup`, e.g. `ledger roles | psql ...`.
    """
    from ledger.store.roles import roles_sql

    with errors():
        config = store_config(url)
        if not config.is_postgres:
            raise InputError("roles are for PostgreSQL: LEDGER_URL is not a postgresql:// URL")
        print(roles_sql(config.env["POSTGRES_SCHEMA"], prefix), end="")


@app.command()
def keygen() -> None:
    """Print a new AES key for LEDGER_CIPHER_KEY (encryption at rest)."""
    from eventsourcing.cipher import AESCipher

    print(AESCipher.create_key(32))


@app.command()
def demo() -> None:
    """Run the end-to-end demo on SQLite and a local Temporal dev server."""
    from ledger.cli.demo import run_demo

    raise typer.Exit(run_demo(out))
