"""ExecutionPhase: PENDING -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED.

PENDING may go straight to a terminal phase; IN_PROGRESS -> IN_PROGRESS records
progress; a terminal phase is final. Both resource packages number the phases alike.
"""

from __future__ import annotations

import enum

from ledger.api.agentexecution.v1 import enum_pb2 as agent_enum


class Phase(enum.IntEnum):
    """ExecutionPhase, with the same numbers in both resource packages."""

    UNSPECIFIED = 0
    PENDING = 1
    IN_PROGRESS = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES

    @property
    def proto_name(self) -> str:
        """The platform's spelling, e.g. ``EXECUTION_IN_PROGRESS``."""
        return agent_enum.ExecutionPhase.Name(int(self))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, value: str | int) -> Phase:
        """Accepts ``3``, ``COMPLETED``, ``completed`` or ``EXECUTION_COMPLETED``."""
        if isinstance(value, int):
            return cls(value)
        name = value.strip().upper().removeprefix("EXECUTION_").replace("-", "_")
        return cls[name]


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
