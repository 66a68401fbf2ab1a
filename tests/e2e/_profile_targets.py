"""Targets for `obelisk profile` tests: one that works, one that fails half-way."""

from __future__ import annotations

import asyncio


def spin_in_a_recognisable_function() -> int:
    total = 0
    for n in range(300_000):
        total += n * n
    return total


async def fail_after_some_work() -> None:
    spin_in_a_recognisable_function()
    await asyncio.sleep(0)
    raise RuntimeError("the target broke half-way")
