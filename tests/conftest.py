"""Shared fixtures: fail loudly on leaked tasks and unhandled loop exceptions.

PostgreSQL: ``postgres_dsn`` is ``$OBELISK_TEST_POSTGRES_DSN`` when set, else one throwaway
server started for the whole session (only when a test asks for it) and stopped at the end.
Redis and NATS work the same way: ``redis_url`` (``$OBELISK_TEST_REDIS_URL``) and
``nats_url`` (``$OBELISK_TEST_NATS_URL``, a server with JetStream).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from obelisk.servers.nats import ThrowawayNats
from obelisk.servers.postgres import ThrowawayPostgres
from obelisk.servers.redis import ThrowawayRedis
from obelisk.store import MemoryEventStore, SQLiteEventStore

POSTGRES_DSN_ENV = "OBELISK_TEST_POSTGRES_DSN"
REDIS_URL_ENV = "OBELISK_TEST_REDIS_URL"
NATS_URL_ENV = "OBELISK_TEST_NATS_URL"


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, object]]]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled event-loop exceptions: {errors}"


@pytest.fixture
async def sqlite_store(
    tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[SQLiteEventStore]:
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        yield store


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryEventStore]:
    async with MemoryEventStore() as store:
        yield store


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres | None]:
    """The session's own PostgreSQL server, or None when the DSN comes from the environment.

    Fault tests restart it; they skip when it is None (someone else's server).
    """
    if os.environ.get(POSTGRES_DSN_ENV):
        yield None
        return
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: ThrowawayPostgres | None) -> str:
    """A DSN for a PostgreSQL 15 server that tests may create schemas in."""
    if postgres_server is None:
        return os.environ[POSTGRES_DSN_ENV]
    return postgres_server.dsn


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh schema name for one test (the store creates it); dropped at teardown."""
    import asyncpg  # only tests that use PostgreSQL need the driver installed

    name = f"t_{uuid.uuid4().hex}"
    yield name
    # A bounded wait: a test that left a transaction open on the schema (a failed statement
    # inside a hand-opened transaction) must fail here, not hang the whole session.
    conn = await asyncpg.connect(
        postgres_dsn, timeout=30, server_settings={"lock_timeout": "15s"}
    )
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ThrowawayRedis | None]:
    """The session's own Redis server, or None when the URL comes from the environment.

    Fault tests restart it; they skip when it is None (someone else's server).
    """
    if os.environ.get(REDIS_URL_ENV):
        yield None
        return
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: ThrowawayRedis | None) -> str:
    """A Redis URL tests may create keys in (each test uses keys of its own)."""
    return os.environ[REDIS_URL_ENV] if redis_server is None else redis_server.url


@pytest.fixture(scope="session")
def nats_server() -> Iterator[ThrowawayNats | None]:
    """The session's own NATS server (JetStream on), or None when the URL comes from the
    environment. Fault tests restart it; they skip when it is None."""
    if os.environ.get(NATS_URL_ENV):
        yield None
        return
    with ThrowawayNats() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: ThrowawayNats | None) -> str:
    """A NATS URL with JetStream that tests may create streams in."""
    return os.environ[NATS_URL_ENV] if nats_server is None else nats_server.url
