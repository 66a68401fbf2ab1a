"""Hostile input on the read side raises only obelisk's errors.

Every public entry point of the read stores (SQLite and PostgreSQL: transactions, flushes,
keyset pages, checkpoints, leases, dead letters) and of the query cache (in memory, and
with a Redis shared layer, and that layer itself) is fed values a request or a handler
could pass by mistake or on purpose — text with lone surrogates or NUL, a megabyte of text,
integers beyond 64 bits, NaN and infinities, lists nested thousands deep, values of the
wrong type — one argument at a time, the others valid (``_hostile.py`` lists them). Each
call may succeed or raise; what it raises must be an ObeliskError, never a driver's or
Python's own exception.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.caching import QueryCache
from obelisk.caching.redis_cache import RedisQueryCache
from obelisk.errors import ObeliskError
from obelisk.projections import ReadStore
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore

from ._hostile import (
    CACHE_CALLS,
    HOSTILE,
    LAYER_CALLS,
    NAME,
    NASTY,
    READ_STORE_CALLS,
    ROWS,
    SPARE,
    CacheCall,
    LayerCall,
    ReadCall,
)

HOSTILE_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_only_obelisk_errors(what: str, error: BaseException | None) -> None:
    if error is not None and not isinstance(error, ObeliskError):
        raise AssertionError(f"{what} raised {type(error).__name__}: {error!s:.300}") from error


async def outcome(call: Any) -> BaseException | None:
    try:
        await call
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    return None


async def sweep(calls: dict[str, Any], target: Any) -> None:
    """Every call with every one of the fixed nasty values (hypothesis samples the rest)."""
    escaped = []
    for name, run in sorted(calls.items()):
        for value in NASTY:
            error = await outcome(run(target, value))
            if error is not None and not isinstance(error, ObeliskError):
                escaped.append(f"{name}: {type(error).__name__}: {error!s:.120}")
    assert not escaped, "\n".join(escaped)


async def _prepared(store: ReadStore) -> ReadStore:
    await store.register(NAME, 1, 1, [ROWS, SPARE])
    return store


@pytest.fixture
async def sqlite_read_store(tmp_path: Path) -> AsyncIterator[ReadStore]:
    async with SQLiteReadStore(tmp_path / "read.db", busy_timeout=5) as store:
        yield await _prepared(store)


@pytest.fixture
async def postgres_read_store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[ReadStore]:
    async with PostgresReadStore(postgres_dsn, schema=pg_schema, pool_max_size=2) as store:
        yield await _prepared(store)


read_calls = st.sampled_from(sorted(READ_STORE_CALLS.items()))


@HOSTILE_SETTINGS
@given(call=read_calls, value=HOSTILE)
async def test_the_sqlite_read_store_raises_only_obelisk_errors_on_hostile_input(
    sqlite_read_store: ReadStore, call: tuple[str, ReadCall], value: Any
) -> None:
    name, run = call
    assert_only_obelisk_errors(name, await outcome(run(sqlite_read_store, value)))


@HOSTILE_SETTINGS
@given(call=read_calls, value=HOSTILE)
async def test_the_postgres_read_store_raises_only_obelisk_errors_on_hostile_input(
    postgres_read_store: ReadStore, call: tuple[str, ReadCall], value: Any
) -> None:
    name, run = call
    assert_only_obelisk_errors(name, await outcome(run(postgres_read_store, value)))


async def test_every_read_store_entry_point_meets_every_nasty_value_with_obelisk_errors(
    sqlite_read_store: ReadStore, postgres_read_store: ReadStore
) -> None:
    await sweep(READ_STORE_CALLS, sqlite_read_store)
    await sweep(READ_STORE_CALLS, postgres_read_store)


@pytest.fixture
async def shared_layer(redis_url: str) -> AsyncIterator[RedisQueryCache]:
    async with RedisQueryCache(redis_url, prefix=f"test-hostile-{uuid.uuid4().hex[:12]}") as layer:
        yield layer


cache_calls = st.sampled_from(sorted(CACHE_CALLS.items()))


@HOSTILE_SETTINGS
@given(call=cache_calls, value=HOSTILE)
async def test_the_in_memory_query_cache_raises_only_obelisk_errors_on_hostile_input(
    call: tuple[str, CacheCall], value: Any
) -> None:
    name, run = call
    assert_only_obelisk_errors(name, await outcome(run(QueryCache(), value)))


@HOSTILE_SETTINGS
@given(call=cache_calls, value=HOSTILE)
async def test_a_query_cache_with_a_redis_layer_raises_only_obelisk_errors_on_hostile_input(
    shared_layer: RedisQueryCache, call: tuple[str, CacheCall], value: Any
) -> None:
    name, run = call
    cache = QueryCache(shared=shared_layer)
    error = await outcome(run(cache, value))
    await cache.flush()  # background writes and bumps are done (they never raise)
    assert_only_obelisk_errors(name, error)


@HOSTILE_SETTINGS
@given(call=st.sampled_from(sorted(LAYER_CALLS.items())), value=HOSTILE)
async def test_the_redis_shared_layer_raises_only_obelisk_errors_on_hostile_input(
    shared_layer: RedisQueryCache, call: tuple[str, LayerCall], value: Any
) -> None:
    name, run = call
    assert_only_obelisk_errors(name, await outcome(run(shared_layer, value)))


async def test_every_query_cache_entry_point_meets_every_nasty_value_with_obelisk_errors(
    shared_layer: RedisQueryCache,
) -> None:
    await sweep(CACHE_CALLS, QueryCache())
    shared = QueryCache(shared=shared_layer)
    await sweep(CACHE_CALLS, shared)
    await shared.flush()
    await sweep(LAYER_CALLS, shared_layer)
