"""``ledger``: the operators' command line.

Every command has ``--help``; those that print results have ``--json``
(machine-readable output on stdout). Exit codes: 0 success, 1 an error with one
clear line on stderr and no traceback, 2 a usage error. Secrets never appear.
The store is ``--url`` or ``LEDGER_URL`` (see :mod:`ledger.store.url`).

The modules, by topic (importing this package registers every command, in the
order ``ledger --help`` lists them):

- :mod:`ledger.cli._app`: the Typer app, shared options, error handling, ``main``;
- :mod:`ledger.cli.executions`: create, status, complete, fail, cancel, show,
  history, list, audit (rendered by :mod:`ledger.cli._resource`,
  :mod:`ledger.cli._audit` and :mod:`ledger.cli._tables`);
- :mod:`ledger.cli.follow`: watch (one execution, until it ends) and tail (the log);
- :mod:`ledger.cli.admin`: setup, roles, keygen, demo (:mod:`ledger.cli.demo`);
- :mod:`ledger.cli.views`: ``projections status|run|rebuild``;
- :mod:`ledger.cli.dispatcher`: ``dispatcher run|retry-parked|parked``;
- :mod:`ledger.cli.keys`: ``keys list|add|encrypt``;
- :mod:`ledger.cli.console`: ``console`` (:mod:`ledger.cli.web_console`);
- :mod:`ledger.cli._input`, :mod:`ledger.cli._render`, :mod:`ledger.cli._logging`:
  reading documents, printing results, logging of the long-running commands.
"""

from ledger.cli._app import app, main

# Importing registers the commands; `ledger --help` lists them in this order.
# isort: off
from ledger.cli import executions  # noqa: F401
from ledger.cli import follow  # noqa: F401
from ledger.cli import admin  # noqa: F401

# isort: on
from ledger.cli.dispatcher import dispatcher_app
from ledger.cli.keys import keys_app
from ledger.cli.views import projections_app

app.add_typer(projections_app, name="projections")
app.add_typer(dispatcher_app, name="dispatcher")
app.add_typer(keys_app, name="keys")

# Registers `serve`, `token` and `console`.
from ledger.cli import console, serve  # noqa: E402, F401

__all__ = ["app", "main"]
