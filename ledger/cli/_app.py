"""The Typer app of ``ledger``, its shared options and its error handling.

Exit codes: 0 success; 1 an error, told in one ``error:`` line on stderr and no
traceback (bad input, unknown id, illegal transition, store unreachable: every
:class:`~ledger.contract.errors.LedgerError`, see :func:`errors`); 2 a usage
error (Click's). The commands are registered by the topic modules, which
:mod:`ledger.cli` imports: :mod:`~ledger.cli.executions`,
:mod:`~ledger.cli.views`, :mod:`~ledger.cli.dispatcher`, :mod:`~ledger.cli.admin`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.text import Text

from ledger.application import Ledger, open_ledger_with
from ledger.cli._input import UsageError
from ledger.cli._render import err
from ledger.contract.errors import ConfigurationError, LedgerError
from ledger.store.connections import check_store_exists
from ledger.store.url import StoreConfig, parse_url

if TYPE_CHECKING:
    from projections.views import Views

app = typer.Typer(
    name="ledger",
    help="An event-sourced ledger of agent and workflow executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="Store URL (default: $LEDGER_URL, else the SQLite default).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOption = Annotated[
    str, typer.Option("--actor", metavar="NAME", help="Who is acting (recorded in the audit).")
]
VersionOption = Annotated[
    int | None,
    typer.Option(
        "--expected-version",
        metavar="N",
        help="Fail unless the execution is at this version.",
    ),
]


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"ledger (execution-ledger) {version('execution-ledger')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """An event-sourced ledger of agent and workflow executions.

    Try `ledger demo`, then the README's "Try it by hand" (example files in examples/)."""


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (never markup-interpreted), exit code 1 (2: a usage error)."""
    err.print(Text("error: ", style="red") + Text(" ".join(message.split())), highlight=False)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """User errors and store problems become one line on stderr and exit code 1;
    a :class:`~ledger.cli._input.UsageError`, exit code 2."""
    try:
        yield
    except UsageError as e:
        fail(str(e), 2)
    except LedgerError as e:
        fail(str(e))
    except (OSError, ValueError, RecursionError) as e:
        fail(f"{type(e).__name__}: {e}")


def store_config(url: str | None) -> StoreConfig:
    """The store of ``--url``, else ``LEDGER_URL``, else the SQLite default."""
    return parse_url(url)


@contextmanager
def open_ledger(url: str | None, *, read_only: bool = False) -> Iterator[Ledger]:
    """The ledger, closed afterwards; its errors handled by :func:`errors`. A read
    (``read_only``) never creates a store: it says there is none."""
    with errors():
        ledger = open_ledger_with(store_config(url), must_exist=read_only)
        try:
            yield ledger
        finally:
            ledger.close()


@contextmanager
def open_views(url: str | None, *, read_only: bool = True) -> Iterator[Views]:
    """The read models, closed afterwards; their errors handled by :func:`errors`. A
    read (``read_only``) never creates the ledger's store; a follower may."""
    from projections.views import Views

    with errors():
        config = store_config(url)
        if config.scheme == "memory":
            raise ConfigurationError(
                "the views need a SQLite or PostgreSQL store: memory:// keeps nothing "
                "between commands"
            )
        if read_only:
            check_store_exists(config)
        views = Views(config)
        try:
            yield views
        finally:
            views.close()


def main() -> None:
    """Console-script entry point (the commands are registered by :mod:`ledger.cli`)."""
    app()
