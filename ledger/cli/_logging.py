"""Logging of the long-running commands, ``dispatcher run`` and ``projections run``.

Both call :func:`configure_logging`, so both log in one format on stderr:
``text`` (``<time> <LEVEL> <logger>: <message>``) or ``json`` (one JSON object
a line: ``time``, ``level``, ``logger``, ``message``, and ``exception`` when
there is one). Every record passes the token-redacting filter of
:mod:`ledger.temporal.log_redaction` first: a token given as an argument shows
redacted, never whole. The commands' own status lines ("following ...",
"stopped") go through the printer :func:`configure_logging` returns.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from ledger.cli._render import err
from ledger.temporal.log_redaction import TokenRedactingFilter

logger = logging.getLogger("ledger.cli")


class LogLevel(StrEnum):
    """The levels ``--log-level`` accepts (in any case)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(StrEnum):
    """The formats ``--log-format`` accepts."""

    TEXT = "text"
    JSON = "json"


LogLevelOption = Annotated[
    LogLevel,
    typer.Option("--log-level", case_sensitive=False, help="Least level of the logs shown."),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option("--log-format", case_sensitive=False, help="Logs as text or JSON lines."),
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO-8601, UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line)


def configure_logging(level: LogLevel, log_format: LogFormat) -> Callable[[str], None]:
    """Every log record to stderr, at ``level`` and above, in ``log_format``, redacted.

    Returns how the command prints its own status lines: on the console as it
    always did in text; as ``ledger.cli`` INFO records in json, so that every
    line is JSON.
    """
    as_json = log_format is LogFormat.JSON
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TokenRedactingFilter())
    logging.basicConfig(level=level.value.upper(), handlers=[handler], force=True)
    return logger.info if as_json else err.print
