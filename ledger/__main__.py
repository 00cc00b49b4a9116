"""``python -m ledger`` and the ``ledger`` console script.

The CLI (:mod:`ledger.cli`) takes a few tenths of a second to import; a Ctrl-C
in that time would print a ``KeyboardInterrupt`` traceback. Here it ends the
command with one line and exit code 130, as it does once the CLI runs.
"""

from __future__ import annotations

import sys

INTERRUPTED_EXIT_CODE = 130
"""128 + SIGINT, the shell's convention."""


def main() -> None:
    """Imports and runs the CLI; a Ctrl-C meanwhile is one line on stderr, exit 130.

    Typer ends a command interrupted before it installed its own signal handlers
    with a silent ``Exit(130)``: that is the same interruption, told the same way.
    """
    try:
        from ledger.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except SystemExit as e:
        if e.code == INTERRUPTED_EXIT_CODE:
            sys.stderr.write("interrupted\n")
        raise


if __name__ == "__main__":
    main()
