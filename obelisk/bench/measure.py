"""What one timed run produces, and the stopwatch every run uses.

Both sides of a workload (obelisk and the raw driver) time themselves with the same
:func:`stopwatch`, so the garbage collector and the clock are treated alike.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["BenchError", "Sample", "Stopwatch", "VerificationFailed", "stopwatch"]


class BenchError(Exception):
    """A benchmark could not run as asked (bad option, unsupported backend)."""


class VerificationFailed(BenchError):
    """A timed run did not do the work it claims: its numbers would be meaningless."""


@dataclass(slots=True)
class Stopwatch:
    """Seconds elapsed inside a :func:`stopwatch` block (set when the block ends)."""

    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """Time the block with ``time.perf_counter``, after a full garbage collection.

    Collecting first keeps garbage left by the set-up (or by the previous run) from being
    collected, and paid for, inside the timed section.
    """
    watch = Stopwatch()
    gc.collect()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start


@dataclass(slots=True)
class Sample:
    """One timed run of one side of a workload.

    Attributes:
        seconds: wall time of the timed section.
        work: how many units of work it did (commands, events read, loads).
        result: what the run computed, for verification after the clock stopped.
        extra: side facts worth reporting (e.g. group-commit batch sizes).
    """

    seconds: float
    work: int
    result: object = None
    extra: dict[str, float] = field(default_factory=dict)
