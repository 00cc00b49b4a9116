"""The ``ledger`` command."""

from ledger.cli import serve as _serve  # noqa: F401  (registers `serve` and `token`)
from ledger.cli.commands import app, main

__all__ = ["app", "main"]
