"""Read-your-writes: wait until a read model has applied a command's events.

A command returns the global position of its last event (``await app.handle(...)``). A
query that must see that command's effect waits for the projection to reach it: in the
runner's process with :meth:`ProjectionRunner.wait_for`, anywhere else with
:func:`wait_for_position`, which watches the checkpoints in the read database.

Over HTTP the position travels in a header: the command's response carries it
(:func:`position_header`), the client sends it back with its next query, and the query
handler reads it (:func:`position_from_headers`) and waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Final

from obelisk.errors import ValidationError
from obelisk.projections.readstore import ReadStore

__all__ = ["POSITION_HEADER", "position_from_headers", "position_header", "wait_for_position"]

POSITION_HEADER: Final = "obelisk-position"
"""The header carrying a global position (HTTP header names are case-insensitive)."""

_MAX_POSITION: Final = 2**63 - 1


def position_header(position: int | None) -> dict[str, str]:
    """The response header for a command's position (empty when it recorded nothing)."""
    if position is None:
        return {}
    return {POSITION_HEADER: str(position)}


def position_from_headers(headers: Mapping[str, str]) -> int | None:
    """The position a client sent back, or None when it sent none.

    Raises:
        ValidationError: the header is not a position (a non-negative integer).
    """
    value = None
    for name, candidate in headers.items():
        if name.lower() == POSITION_HEADER:
            value = candidate
            break
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_POSITION:
        raise ValidationError(f"{POSITION_HEADER} must be a non-negative integer, got {value!r}")
    return int(text)


async def wait_for_position(
    read_store: ReadStore,
    projection: str,
    position: int,
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for the whole wait, polled
    poll_interval: float = 0.005,
) -> bool:
    """Wait until every partition of ``projection``'s live generation has applied
    ``position``; False when ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    delay = poll_interval
    while True:
        reached = await read_store.live_position(projection)
        if reached is not None and reached >= position:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.1)
