"""Retrying a command handler when another writer got to the aggregate first."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy", "NO_RETRY"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to re-run a handler after a ConcurrencyError.

    Only for idempotent handlers: the handler runs again from a fresh load, so it must
    decide again from the new state rather than repeat a side effect.

    Attributes:
        attempts: total runs, the first included (1 means no retry).
        base_delay: seconds before the first retry; doubles each time, with jitter.
        max_delay: the longest wait between two runs.
    """

    attempts: int = 3
    base_delay: float = 0.001
    max_delay: float = 0.05

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before run ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        # Full jitter: writers that collided once should not collide again in lockstep.
        return random.uniform(0, ceiling)


NO_RETRY = RetryPolicy(attempts=1)
