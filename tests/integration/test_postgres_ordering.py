"""Gap-free reading on PostgreSQL: a transaction that takes a lower position and commits
after a higher one is never skipped by a reader that looked in between.

Transaction A is opened by hand on its own connection and runs the store's append
statement, so it holds its (lower) positions while the store commits B. Nothing here waits
on a clock to decide what is visible: the checks run while A is provably still open.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from obelisk.store import NO_STREAM, StoredEvent
from obelisk.store.postgres import PostgresEventStore
from obelisk.testing import ContractDeposited


@pytest.fixture
async def store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    async with PostgresEventStore(postgres_dsn, schema=pg_schema) as opened:
        yield opened


async def _open_transaction_a(dsn: str, store: PostgresEventStore) -> tuple[
    asyncpg.Connection, asyncpg.transaction.Transaction, int
]:
    """Start A: append one event to stream 'A' with the store's own batch statement, inside
    a transaction that stays open."""
    conn = await asyncpg.connect(dsn)
    transaction = conn.transaction()
    await transaction.start()
    rows = await conn.fetch(
        store.batch_append_sql,
        ["A"], [NO_STREAM], [None], [0], [None], [None],  # stream, expected, type, job, ...
        [1], [uuid.uuid4()], [ContractDeposited.event_type], [1], [b'{"amount":100}'],
        [None],  # trace context
    )  # fmt: skip
    assert rows[0]["ok"]
    return conn, transaction, rows[0]["first_position"]


async def test_a_later_committing_lower_position_is_not_skipped_by_read_all(
    postgres_dsn: str, store: PostgresEventStore
) -> None:
    await store.append("before", [ContractDeposited(amount=1)], NO_STREAM)
    conn, transaction, a_position = await _open_transaction_a(postgres_dsn, store)
    try:
        b = await store.append("B", [ContractDeposited(amount=2)], NO_STREAM)
        assert b.first_position > a_position, "A must hold the lower position for this test"

        # B is committed, A is not. Handing out B now would move a reader's checkpoint
        # past A's position, and A would be lost to it when it commits: B is withheld.
        seen = await store.read_all()
        assert [e.stream_id for e in seen] == ["before"]
        assert await store.last_position() == seen[-1].position
        # B itself is committed: its own stream reads it (read-your-writes on streams).
        assert [e.version for e in await store.read_stream("B")] == [1]

        await transaction.commit()
    finally:
        await conn.close()
    after = await store.read_all()
    assert [e.stream_id for e in after] == ["before", "A", "B"]
    assert [e.position for e in after] == sorted(e.position for e in after)
    # Resuming from the checkpoint a reader held before A committed finds A too.
    resumed = await store.read_all(after=seen[-1].position)
    assert [e.stream_id for e in resumed] == ["A", "B"]


async def test_a_subscription_running_in_between_receives_a_then_b(
    postgres_dsn: str, store: PostgresEventStore
) -> None:
    await store.append("before", [ContractDeposited(amount=1)], NO_STREAM)
    received: list[StoredEvent] = []
    sub = store.subscribe(poll_interval=0.02)

    async def follow() -> None:
        async for event in sub:
            received.append(event)

    task = asyncio.create_task(follow())
    conn, transaction, _ = await _open_transaction_a(postgres_dsn, store)
    try:
        await store.append("B", [ContractDeposited(amount=2)], NO_STREAM)
        # Let the subscription read several times while A is open and B is committed.
        reads_before = sub.reads
        await asyncio.wait_for(_wait_for(lambda: sub.reads >= reads_before + 5), 30)
        assert [e.stream_id for e in received] == ["before"]
        await transaction.commit()
    finally:
        await conn.close()
    await asyncio.wait_for(_wait_for(lambda: len(received) >= 3), 30)
    await sub.aclose()
    await asyncio.wait_for(task, 30)
    assert [e.stream_id for e in received] == ["before", "A", "B"]
    assert sub.position == received[-1].position


async def test_a_rolled_back_lower_transaction_releases_the_later_commit(
    postgres_dsn: str, store: PostgresEventStore
) -> None:
    conn, transaction, _ = await _open_transaction_a(postgres_dsn, store)
    try:
        await store.append("B", [ContractDeposited(amount=2)], NO_STREAM)
        assert await store.read_all() == []
        await transaction.rollback()
    finally:
        await conn.close()
    assert [e.stream_id for e in await store.read_all()] == ["B"]
    assert await store.stream_version("A") == 0  # the placeholder head went with A


async def _wait_for(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the conditions are plain counters
        await asyncio.sleep(0.01)
