"""Broker servers for the messaging workloads: a throwaway one per run, or a named one.

Each timed run (obelisk's and the raw driver's alike) gets a fresh ``redis-server`` or
``nats-server`` of its own in a temporary folder, started before its clock and stopped
after it: no run ever reads what another left behind. With ``OBELISK_BENCH_REDIS_URL`` or
``OBELISK_BENCH_NATS_URL`` set, runs use that server instead, each under names of its own
(a key prefix, a stream name) that it deletes afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal

from obelisk.bench.measure import BenchError

if TYPE_CHECKING:
    from obelisk.servers.nats import ThrowawayNats
    from obelisk.servers.redis import ThrowawayRedis

__all__ = [
    "NATS_URL_ENV",
    "REDIS_URL_ENV",
    "BrokerKind",
    "broker_server",
    "run_tag",
    "server_missing",
]

REDIS_URL_ENV: Final = "OBELISK_BENCH_REDIS_URL"
NATS_URL_ENV: Final = "OBELISK_BENCH_NATS_URL"

BrokerKind = Literal["redis", "nats"]

_ENV: Final[dict[str, str]] = {"redis": REDIS_URL_ENV, "nats": NATS_URL_ENV}


def _throwaway(kind: BrokerKind) -> ThrowawayRedis | ThrowawayNats:
    if kind == "redis":
        from obelisk.servers.redis import ThrowawayRedis

        return ThrowawayRedis()
    from obelisk.servers.nats import ThrowawayNats

    return ThrowawayNats()


def _named(kind: BrokerKind) -> str | None:
    return os.environ.get(_ENV[kind]) or None


def server_missing(kind: BrokerKind) -> str | None:
    """Why no ``kind`` server can be had (no URL given, no binary installed); else None."""
    if _named(kind) is not None:
        return None
    try:
        _throwaway(kind).find()
    except RuntimeError as exc:
        return f"{exc} (or set {_ENV[kind]} to a running server)"
    return None


def run_tag() -> str:
    """A short name unique to one run, for its keys, topics and streams."""
    return f"bench{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def broker_server(kind: BrokerKind) -> AsyncIterator[tuple[str, bool]]:
    """``(url, shared)`` of a ``kind`` server for one run: a throwaway one (``shared`` is
    False), stopped when the block ends, or the environment's (``shared`` True: the run
    must keep to names of its own and delete them).

    Raises:
        BenchError: the throwaway server did not start.
    """
    named = _named(kind)
    if named is not None:
        yield named, True
        return
    server = _throwaway(kind)
    try:
        # start() blocks while the server comes up (a few tens of ms): not on the loop.
        await asyncio.to_thread(server.start)
    except RuntimeError as exc:
        raise BenchError(f"the bench could not start {kind}: {exc}") from exc
    try:
        yield server.url, False
    finally:
        await asyncio.to_thread(server.stop)
