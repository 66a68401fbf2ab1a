"""The query cache: single-flight under concurrency, tag invalidation (also driven by a
projection's committed batch, and across processes through Redis), HTTP validators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from obelisk.application import Application
from obelisk.caching import QueryCache, cache_headers, etag, not_modified
from obelisk.caching.redis_invalidation import RedisInvalidation
from obelisk.demo.bank import (
    AccountOpened,
    Deposit,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.errors import ValidationError
from obelisk.projections import (
    Context,
    Projection,
    ProjectionRunner,
    Table,
    handles,
    read_store_from_url,
)

WAIT = 30.0


async def test_a_hundred_concurrent_misses_run_one_load() -> None:
    cache = QueryCache()
    release = asyncio.Event()
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()  # every request arrives while the one load is in flight
        return 42

    requests = [asyncio.create_task(cache.get("k", load)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*requests)
    assert calls == 1 and {r.value for r in results} == {42}
    assert (cache.stats.loads, cache.stats.shared, cache.stats.misses) == (1, 99, 100)
    assert (await cache.get("k", load)).value == 42 and cache.stats.hits == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = QueryCache()
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise RuntimeError("database down")

    requests = [asyncio.create_task(cache.get("k", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert cache.peek("k") is None

    async def working() -> int:
        return 7

    assert (await cache.get("k", working)).value == 7


async def test_invalidating_a_tag_drops_its_entries_and_changes_their_etag() -> None:
    cache = QueryCache()

    async def load() -> str:
        return "rows"

    first = await cache.get("section:A", load, tags=["section:A"])
    other = await cache.get("section:B", load, tags=["section:B"])
    assert cache.invalidate("section:A") == 1
    assert cache.peek("section:A") is None and cache.peek("section:B") is other
    again = await cache.get("section:A", load, tags=["section:A"])
    assert again.etag != first.etag and cache.stats.loads == 3


async def test_a_load_that_an_invalidation_overtook_is_served_but_not_kept() -> None:
    cache = QueryCache()
    loading = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> str:
        loading.set()
        await release.wait()
        return "read before the change"

    request = asyncio.create_task(cache.get("k", slow, tags=["t"]))
    await loading.wait()
    cache.invalidate("t")  # the rows change while the query runs
    release.set()
    assert (await request).value == "read before the change"
    assert cache.peek("k") is None and cache.stats.stale_loads == 1


async def test_the_least_recently_used_entry_goes_first() -> None:
    cache = QueryCache(max_entries=2)

    async def load() -> int:
        return 1

    await cache.get("a", load)
    await cache.get("b", load)
    await cache.get("a", load)  # a is recent now
    await cache.get("c", load)
    assert cache.peek("b") is None and cache.peek("a") is not None and len(cache) == 2
    with pytest.raises(ValidationError):
        QueryCache(max_entries=0)


def test_http_validators() -> None:
    tag = etag([("section:A", 3)])
    assert tag == etag([("section:A", 3)]) != etag([("section:A", 4)])
    assert not_modified({"If-None-Match": tag}, tag)
    assert not_modified({"if-none-match": f'"other", W/{tag}'}, tag)
    assert not_modified({"If-None-Match": "*"}, tag)
    assert not not_modified({"If-None-Match": '"other"'}, tag)
    assert not not_modified({}, tag)
    assert cache_headers(tag, max_age=5) == {"etag": tag, "cache-control": "public, max-age=5"}


class Balances(Projection):
    name = "cached_balances"
    accounts = Table("accounts", {"account_id": "text", "balance": "integer"}, key="account_id")

    @handles(AccountOpened)
    def opened(self, event: AccountOpened, ctx: Context) -> None:
        ctx.upsert(self.accounts, account_id=ctx.stream_id, balance=0)
        ctx.invalidate(f"account:{ctx.stream_id}")

    @handles(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, ctx: Context) -> None:
        ctx.add(self.accounts, ctx.stream_id, balance=event.amount)
        ctx.invalidate(f"account:{ctx.stream_id}")


async def test_a_projection_batch_invalidates_the_queries_of_the_rows_it_changed(
    tmp_path: Path,
) -> None:
    cache = QueryCache()
    app = register_bank_handlers(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        await app.handle(OpenAccount(account_id="b", owner="bob"))
        runner = ProjectionRunner(Balances(), app.store, read_store, invalidate=cache.invalidate)
        await runner.run_until_caught_up()

        async def balance(account: str) -> int:
            rows = await read_store.query(
                "SELECT balance FROM accounts WHERE account_id = ?", account
            )
            return int(rows[0][0])

        def query(account: str) -> object:
            return cache.get(f"balance:{account}", lambda: balance(account),
                             tags=[f"account:{account}"])  # fmt: skip

        assert (await query("a")).value == 0  # type: ignore[attr-defined]
        b = await query("b")
        await app.handle(Deposit(account_id="a", amount=5))
        await runner.run_until_caught_up()
        assert cache.peek("balance:a") is None  # dropped once the batch committed
        assert cache.peek("balance:b") is b  # untouched rows keep their entry
        assert (await query("a")).value == 5  # type: ignore[attr-defined]


async def test_invalidations_reach_the_caches_of_other_processes_through_redis(
    redis_url: str,
) -> None:
    here, there = QueryCache(), QueryCache()
    ours, theirs = RedisInvalidation(redis_url, here), RedisInvalidation(redis_url, there)
    await ours.start()
    await theirs.start()
    try:

        async def load() -> str:
            return "rows"

        await there.get("k", load, tags=["section:A"])
        here.invalidate("section:A")  # the process running the projection
        async with asyncio.timeout(WAIT):
            while there.peek("k") is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert there.version("section:A") == 1 and theirs.received == 1
        assert ours.received == 0  # its own message is not applied twice
    finally:
        await ours.stop()
        await theirs.stop()


async def test_hostile_messages_on_the_invalidation_channel_do_not_stop_the_listener(
    redis_url: str,
) -> None:
    from redis.asyncio import Redis

    here = QueryCache()
    listener = RedisInvalidation(redis_url, here, channel=f"hostile-{id(here)}")
    await listener.start()
    client = Redis.from_url(redis_url)
    try:

        async def load() -> str:
            return "rows"

        await here.get("k", load, tags=["section:A"])
        # Anyone can publish on the channel: none of these is an invalidation.
        for junk in (b"[" * 5000 + b"]" * 5000, b"[]", b"1", b"not json",
                     b'{"origin": "x", "tags": [1, 2]}', b'{"origin": "x", "tags": "ab"}'):
            await client.publish(listener.channel, junk)
        await client.publish(listener.channel, b'{"origin": "x", "tags": ["section:A"]}')
        async with asyncio.timeout(WAIT):
            while here.peek("k") is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert listener.received == 1  # the one real invalidation, after the junk
    finally:
        await client.aclose()
        await listener.stop()
