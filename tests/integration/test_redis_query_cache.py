"""The query cache's shared layer in Redis: several processes (here, several QueryCaches with
their own RedisQueryCache) share results, never a result older than its tags' last
invalidation, and a Redis that is down costs loads, never answers.

Every test has a key prefix of its own in the session's Redis.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from obelisk.caching import QueryCache, RedisQueryCache, SharedLookup
from obelisk.caching.redis_invalidation import RedisInvalidation
from obelisk.errors import ValidationError
from obelisk.messaging.redis import redis_client
from obelisk.servers._host import free_port

from ._proxy import Proxy

WAIT = 30.0

OpenLayer = Callable[..., Awaitable[RedisQueryCache]]


class Rows:
    """A stand-in for the read model: the current value and how often it was read."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.reads = 0

    async def read(self) -> Any:
        self.reads += 1
        return self.value


async def never() -> Any:
    raise AssertionError("the loader ran: the shared layer should have answered")


@pytest.fixture
def prefix() -> str:
    return f"test-qc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_layer(
    redis_url: str, prefix: str, loop_errors: list[object]
) -> AsyncIterator[OpenLayer]:
    """Start a RedisQueryCache on this test's prefix (kind= a subclass); stopped at the end."""
    opened: list[RedisQueryCache] = []

    async def open_(
        url: str | None = None, kind: type[RedisQueryCache] = RedisQueryCache, **options: Any
    ) -> RedisQueryCache:
        layer = kind(url or redis_url, prefix=prefix, **options)
        await layer.start()
        opened.append(layer)
        return layer

    yield open_
    for layer in opened:
        await layer.stop()


async def exists(redis_url: str, key: str) -> bool:
    client = redis_client(redis_url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


async def test_a_second_process_miss_is_served_from_redis_without_its_loader(
    open_layer: OpenLayer,
) -> None:
    layer = await open_layer()
    here, there = QueryCache(shared=layer), QueryCache(shared=layer)  # one layer, two caches
    rows = Rows({"section": "A", "left": 10})

    first = await here.get("seats:A", rows.read, tags=["section:A"])
    await here.flush()  # the write after the load is done
    assert layer.stored == 1
    second = await there.get("seats:A", never, tags=["section:A"])

    assert second.value == first.value == {"section": "A", "left": 10} and rows.reads == 1
    assert (here.stats.loads, here.stats.shared_misses, here.stats.shared_hits) == (1, 1, 0)
    assert (there.stats.loads, there.stats.shared_misses, there.stats.shared_hits) == (0, 0, 1)
    assert there.stats.shared_hit_ratio == 1.0
    # Kept locally: the next request is a local hit, Redis is not asked again.
    assert there.peek("seats:A") is second
    assert (await there.get("seats:A", never, tags=["section:A"])) is second
    assert (there.stats.hits, there.stats.shared_hits) == (1, 1)


async def test_an_invalidation_in_one_process_makes_the_others_reload(
    redis_url: str, prefix: str, open_layer: OpenLayer
) -> None:
    here_layer, there_layer = await open_layer(), await open_layer()
    here, there = QueryCache(shared=here_layer), QueryCache(shared=there_layer)
    channel = f"{prefix}:invalidations"
    ours = RedisInvalidation(redis_url, here, channel=channel)
    theirs = RedisInvalidation(redis_url, there, channel=channel)
    heard = asyncio.Event()
    apply = there.invalidate

    def invalidate(*tags: str, broadcast: bool = True) -> int:
        dropped = apply(*tags, broadcast=broadcast)
        heard.set()
        return dropped

    there.invalidate = invalidate  # type: ignore[method-assign]
    await ours.start()
    await theirs.start()
    try:
        rows = Rows(10)
        await here.get("left:A", rows.read, tags=["section:A"])
        await here.flush()
        assert (await there.get("left:A", never, tags=["section:A"])).value == 10

        rows.value = 9  # the projection's batch commits...
        here.invalidate("section:A")  # ...then invalidates, in the process that runs it
        await here.flush()  # the Redis version is bumped, then the invalidation published
        assert await here_layer.versions(("section:A",)) == (1,)
        async with asyncio.timeout(WAIT):
            await heard.wait()
        assert there.peek("left:A") is None  # dropped locally (pub/sub)

        # Its miss does not find the old value in Redis: the versions moved on.
        again = await there.get("left:A", rows.read, tags=["section:A"])
        assert again.value == 9 and rows.reads == 2
        assert (there.stats.shared_hits, there.stats.shared_misses) == (1, 1)
        await there.flush()
        # And what it loaded serves the first process.
        assert (await here.get("left:A", never, tags=["section:A"])).value == 9
    finally:
        await ours.stop()
        await theirs.stop()


async def test_a_load_that_started_before_an_invalidation_is_not_stored_in_redis(
    redis_url: str, open_layer: OpenLayer
) -> None:
    here_layer, there_layer = await open_layer(), await open_layer()
    here, there = QueryCache(shared=here_layer), QueryCache(shared=there_layer)
    rows = Rows("before")
    loading, release = asyncio.Event(), asyncio.Event()

    async def slow_read() -> str:
        value = rows.value  # the rows as they were before the change
        loading.set()
        await release.wait()
        return str(value)

    request = asyncio.create_task(there.get("k", slow_read, tags=["t"]))
    await loading.wait()
    rows.value = "after"  # the batch commits while the query runs...
    here.invalidate("t")  # ...and another process invalidates
    await here.flush()
    release.set()
    assert (await request).value == "before"  # served to the request that asked before
    await there.flush()

    assert (there_layer.stored, there_layer.refused) == (0, 1)  # the check-and-set refused it
    assert not await exists(redis_url, there_layer.value_key("k"))
    newcomer = QueryCache(shared=await open_layer())  # a third process
    assert (await newcomer.get("k", rows.read, tags=["t"])).value == "after"
    assert newcomer.stats.shared_misses == 1


async def test_a_load_overtaken_by_an_invalidation_in_its_own_process_is_not_written(
    redis_url: str, open_layer: OpenLayer
) -> None:
    layer = await open_layer()
    cache = QueryCache(shared=layer)
    loading, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        loading.set()
        await release.wait()
        return "read before the change"

    request = asyncio.create_task(cache.get("k", slow, tags=["t"]))
    await loading.wait()
    cache.invalidate("t")
    release.set()
    assert (await request).value == "read before the change"
    await cache.flush()
    assert cache.stats.stale_loads == 1 and cache.peek("k") is None
    assert (layer.stored, layer.refused) == (0, 0)  # not even tried
    assert not await exists(redis_url, layer.value_key("k"))
    assert await layer.versions(("t",)) == (1,)


class CountingLayer(RedisQueryCache):
    """Counts finished version bumps, and records how many a lookup came after."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bumps_done = 0
        self.lookups_after: list[int] = []

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        await super().invalidate(tags)
        self.bumps_done += 1

    async def lookup(self, key: str, tags: tuple[str, ...]) -> SharedLookup:
        self.lookups_after.append(self.bumps_done)
        return await super().lookup(key, tags)


async def test_after_an_invalidation_the_old_value_is_read_neither_here_nor_by_the_told(
    open_layer: OpenLayer,
) -> None:
    layer = await open_layer(kind=CountingLayer)
    assert isinstance(layer, CountingLayer)
    cache = QueryCache(shared=layer)
    told: list[int] = []
    cache.on_invalidate(lambda tags: told.append(layer.bumps_done))
    rows = Rows("before")
    await cache.get("k", rows.read, tags=["t"])
    await cache.flush()

    rows.value = "after"
    cache.invalidate("t")  # the bump runs in the background
    assert told == []  # other processes are told once Redis has the new version
    again = await cache.get("k", rows.read, tags=["t"])  # asked before the bump landed
    assert again.value == "after" and rows.reads == 2
    assert layer.lookups_after == [0, 1]  # its lookup waited for the bump
    await cache.flush()
    assert told == [1]


async def test_a_hundred_concurrent_misses_run_one_load_and_one_redis_lookup(
    open_layer: OpenLayer,
) -> None:
    here, there = QueryCache(shared=await open_layer()), QueryCache(shared=await open_layer())
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return 42

    requests = [asyncio.create_task(here.get("k", load, tags=["t"])) for _ in range(100)]
    await started.wait()
    release.set()
    assert {r.value for r in await asyncio.gather(*requests)} == {42} and calls == 1
    s = here.stats
    assert (s.loads, s.shared, s.shared_misses, s.shared_hits) == (1, 99, 1, 0)
    await here.flush()

    requests = [asyncio.create_task(there.get("k", never, tags=["t"])) for _ in range(100)]
    assert {r.value for r in await asyncio.gather(*requests)} == {42}
    s = there.stats
    assert (s.loads, s.shared, s.shared_misses, s.shared_hits) == (0, 99, 0, 1)


class Seats(msgspec.Struct, frozen=True):
    section: str
    left: int


@dataclass(frozen=True)
class Row:
    section: str
    left: int


async def test_type_decodes_what_redis_returns_and_the_loaders_result_alike(
    open_layer: OpenLayer,
) -> None:
    here, there = QueryCache(shared=await open_layer()), QueryCache(shared=await open_layer())

    async def seats() -> list[Seats]:
        return [Seats("A", 10), Seats("B", 3)]

    loaded = await here.get("seats", seats, tags=["t"], type=list[Seats])
    await here.flush()
    shared = await there.get("seats", never, tags=["t"], type=list[Seats])
    assert shared.value == loaded.value == [Seats("A", 10), Seats("B", 3)]
    assert isinstance(shared.value[0], Seats) and there.stats.shared_hits == 1

    async def row() -> Row:
        return Row("A", 10)

    # The loader's own result is served decoded too: every process serves the same shape.
    assert (await here.get("row", row, type=Row)).value == Row("A", 10)
    assert (await here.get("untyped", row)).value == {"section": "A", "left": 10}
    await here.flush()
    assert (await there.get("row", never, type=Row)).value == Row("A", 10)
    assert (await there.get("untyped", never)).value == {"section": "A", "left": 10}


async def test_a_value_that_does_not_decode_as_the_type_asked_is_a_miss_and_overwritten(
    open_layer: OpenLayer,
) -> None:
    here, there = QueryCache(shared=await open_layer()), QueryCache(shared=await open_layer())
    await here.get("k", Rows("text").read, tags=["t"])  # an older release stored a string
    await here.flush()
    rows = Rows(7)
    assert (await there.get("k", rows.read, tags=["t"], type=int)).value == 7
    assert (there.stats.shared_hits, there.stats.shared_misses, rows.reads) == (0, 1, 1)
    await there.flush()
    later = QueryCache(shared=await open_layer())
    assert (await later.get("k", never, tags=["t"], type=int)).value == 7


async def test_a_result_that_cannot_be_encoded_fails_the_query_clearly(
    redis_url: str, open_layer: OpenLayer
) -> None:
    layer = await open_layer()
    cache = QueryCache(shared=layer)

    async def unencodable() -> object:
        return object()

    requests = [cache.get("k", unencodable, tags=["t"]) for _ in range(3)]
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(o, ValidationError) for o in outcomes), outcomes
    assert (cache.stats.loads, cache.stats.shared) == (1, 2)  # the waiters got it too
    message = str(outcomes[0])
    assert "'k'" in message and "cannot be stored in the shared cache" in message
    await cache.flush()
    assert cache.peek("k") is None and layer.stored == 0
    assert not await exists(redis_url, layer.value_key("k"))

    async def mistyped() -> str:
        return "not a number"

    with pytest.raises(ValidationError, match="does not decode as <class 'int'>"):
        await cache.get("n", mistyped, type=int)


async def test_with_redis_unreachable_the_loaders_answer_and_errors_are_counted(
    prefix: str, caplog: pytest.LogCaptureFixture, loop_errors: list[object]
) -> None:
    layer = RedisQueryCache(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    await layer.start()
    cache = QueryCache(shared=layer)
    rows = Rows("rows")
    try:
        with caplog.at_level(logging.WARNING, logger="obelisk.caching"):
            assert (await cache.get("k", rows.read, tags=["t"])).value == "rows"
            assert cache.stats.shared_errors == 1  # the lookup failed
            assert (await cache.get("k", never, tags=["t"])).value == "rows"  # a local hit
            cache.invalidate("t")
            await cache.flush()  # the bump failed, and paying it in flush too
            assert cache.stats.shared_errors == 3
            assert (await cache.get("k", rows.read, tags=["t"])).value == "rows"
            assert cache.stats.shared_errors == 4 and rows.reads == 2
        assert cache.stats.shared_hits == cache.stats.shared_misses == 0
        warnings = [r for r in caplog.records if r.name == "obelisk.caching"]
        assert len(warnings) == 1 and "shared layer failing" in warnings[0].getMessage()
    finally:
        await layer.stop()


async def test_a_version_bump_that_failed_is_paid_once_redis_is_back(
    redis_url: str, open_layer: OpenLayer
) -> None:
    proxy = Proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    try:
        proxied = redis_url.replace(f":{proxy.target}", f":{proxy.port}")
        here_layer = await open_layer(proxied, retry_after=0)
        there_layer = await open_layer()  # another process, that still reaches Redis
        here, there = QueryCache(shared=here_layer), QueryCache(shared=there_layer)
        told: list[tuple[str, ...]] = []
        here.on_invalidate(told.append)
        rows = Rows("before")
        await here.get("k", rows.read, tags=["t"])
        await here.flush()

        await proxy.cut()
        rows.value = "after"
        here.invalidate("t")
        await here.flush()
        assert here.stats.shared_errors == 2 and told == [("t",)]  # told anyway
        assert await there_layer.versions(("t",)) == (0,)  # Redis did not hear of it

        await proxy.resume()
        await here.flush()  # paid now; the others are told again
        assert await there_layer.versions(("t",)) == (1,) and told == [("t",), ("t",)]
        assert (await there.get("k", rows.read, tags=["t"])).value == "after"
    finally:
        await proxy.stop()
