"""The ``ledger`` command."""

from ledger.cli.commands import app, main

__all__ = ["app", "main"]
