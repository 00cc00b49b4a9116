"""How the ledger's processes wait between tries of something that failed for a
passing reason (a store or Temporal outage, a lost race): one helper for every loop.

>>> delays = Backoff(initial=0.1, maximum=1.0)
>>> [round(delays.delay(tries), 2) for tries in range(1, 6)]
[0.1, 0.2, 0.4, 0.8, 1.0]
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential delays, capped, with optional jitter.

    ``delay(n)`` is the wait after the ``n``-th failed try (1-based):
    ``initial * factor ** (n - 1)``, at most ``maximum``. ``jitter`` is the fraction
    of each delay drawn at random (``0.5``: between half and the whole delay), so
    processes that failed together do not retry together.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0

    def delay(self, tries: int) -> float:
        exponent = min(max(tries - 1, 0), 64)  # Past 2**64 every cap has long been hit.
        base = min(self.initial * self.factor**exponent, self.maximum)
        if self.jitter:
            base *= 1.0 - self.jitter * random.random()  # noqa: S311 - not for secrets
        return float(base)

    def delays(self) -> Iterator[float]:
        """The delays after the 1st, 2nd, ... failed try, without end."""
        tries = 0
        while True:
            tries += 1
            yield self.delay(tries)
