"""The ``ledger`` CLI for tests: a real process, or, for commands that only read and
print, the same entry point called in the test's process.

A ``ledger`` process spends about a quarter of a CPU second starting (the
interpreter, then typer, rich, the application and the store's drivers) before it
does anything; the suite runs hundreds. Where what is tested is what a command
prints (a listing's rows, filters, pages, columns, JSON), not how a process
starts, ends or handles signals, :func:`run` calls :func:`ledger.__main__.main`
here instead: the same Typer app and entry point, with ``sys.argv``, the
environment, stdin, stdout and stderr set as a process would have them, the exit
code taken from its ``SystemExit``, and any exception that would escape it written
to stderr as the traceback a process would print (exit code 1), so "no traceback"
checks keep their meaning.

Only :data:`READ_COMMANDS` and ``--help`` run in-process: they open the store, read, print and
close it; they install no signal handler, configure no logging and start no
thread that outlives them. Every other command (writes, ``run``, ``rebuild``,
``setup``, ``serve`` ...) is a subprocess, and so is every test that checks the
process itself (start-up, Ctrl-C, exit codes of the real entry point: ``test_cli``,
``test_trust``, ``test_hostile``). Calls in-process are serialised (they swap the
process's standard streams and environment).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

LEDGER = str(Path(sys.executable).parent / "ledger")
"""The ``ledger`` console script of this environment."""

READ_COMMANDS: frozenset[tuple[str, ...]] = frozenset(
    {
        ("list",),
        ("show",),
        ("history",),
        ("audit",),
        ("projections", "status"),
        ("projections", "dead-letters"),
        ("dispatcher", "parked"),
    }
)
"""Commands that only read the store and print: run in-process by :func:`run`."""

_LOCK = threading.Lock()


def _command(args: Sequence[str]) -> tuple[str, ...]:
    words = [a for a in args[:2] if not a.startswith("-")]
    if words[:1] in (["projections"], ["dispatcher"], ["keys"]):
        return tuple(words[:2])
    return tuple(words[:1])


def reads_only(args: Sequence[str]) -> bool:
    """Whether ``ledger <args>`` is one of :data:`READ_COMMANDS`, or asks for help
    (``--help`` prints the usage and exits before any command runs)."""
    return "--help" in args or _command(args) in READ_COMMANDS


def run(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``ledger <args>`` with ``env`` (the whole environment): in-process for
    :data:`READ_COMMANDS`, else as a subprocess."""
    if not reads_only(args):
        return subprocess.run(
            [LEDGER, *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=timeout,
        )
    with _LOCK:
        return _in_process(list(args), env, stdin)


def _in_process(
    args: list[str], env: Mapping[str, str], stdin: str | None
) -> subprocess.CompletedProcess[str]:
    from ledger.__main__ import main
    from ledger.cli import _render

    out, err = io.StringIO(), io.StringIO()
    code: int
    with _environment(env), _streams(stdin or "", out, err), _argv([LEDGER, *args]):
        # The consoles read COLUMNS when created (at import): as a process would, now.
        widths = _render.out.width, _render.err.width
        columns = env.get("COLUMNS", "")
        if columns.isdigit():
            _render.out.width = _render.err.width = int(columns)
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                err.write(e.code + "\n")
        except BaseException:
            err.write(traceback.format_exc())
            code = 1
        finally:
            _render.out.width, _render.err.width = widths
    return subprocess.CompletedProcess([LEDGER, *args], code, out.getvalue(), err.getvalue())


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _streams(stdin: str, out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
