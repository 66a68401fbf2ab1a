"""The query cache's debts to its shared layer: a version bump that failed is owed and paid
later; a tag owed again while an earlier debt of it is being paid stays owed.

A scripted shared layer (in memory) makes the interleaving exact; the Redis layer itself is
tested against a real server in tests/integration/test_redis_query_cache.py."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from obelisk.caching import QueryCache
from obelisk.caching.query_cache import SharedCacheError, SharedLookup


class ScriptedShared:
    """``invalidate`` follows a script: "ok", "fail" or an asyncio.Event to wait for."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.invalidated: list[tuple[str, ...]] = []

    def encode(self, value: Any) -> bytes:
        return msgspec.msgpack.encode(value)

    def decode(self, data: bytes, type: Any = None) -> Any:
        return msgspec.msgpack.decode(data)

    async def lookup(self, key: str, tags: tuple[str, ...]) -> SharedLookup:
        return SharedLookup(None, tuple(0 for _ in tags))

    async def store(
        self, key: str, tags: tuple[str, ...], data: bytes, versions: tuple[int, ...]
    ) -> bool:
        return True

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, asyncio.Event):
            await step.wait()
        elif step == "fail":
            raise SharedCacheError("down")
        self.invalidated.append(tuple(sorted(tags)))


async def test_a_failed_bump_is_owed_and_paid_by_the_next_flush() -> None:
    shared = ScriptedShared("fail", "ok")
    cache = QueryCache(shared=shared)

    cache.invalidate("A")
    await cache.flush()

    assert shared.invalidated == [("A",)]  # the failed bump, paid by flush
    assert cache.stats.shared_errors == 1


async def test_a_tag_owed_again_while_its_earlier_debt_is_paid_stays_owed() -> None:
    paying = asyncio.Event()
    shared = ScriptedShared("fail", paying, "fail")
    cache = QueryCache(shared=shared)
    cache.invalidate("A")  # its bump fails: A owed
    flushing = asyncio.create_task(cache.flush())  # pays A ... and waits in the layer
    for _ in range(20):
        await asyncio.sleep(0)
    cache.invalidate("A")  # a newer invalidation of A, whose bump fails too: owed again
    for _ in range(20):
        await asyncio.sleep(0)
    paying.set()
    await flushing
    assert shared.invalidated == [("A",)]  # the first debt, paid

    await cache.flush()  # the second debt is still owed, so this flush pays it

    assert shared.invalidated == [("A",), ("A",)]
