"""Appends made one at a time run in their caller's task; concurrent ones are still batched.

The writer hands an append to its own task only when that buys a batch. These tests pin
where each append's statement runs, and that the fast path gives way under concurrency
and comes back once appends arrive alone again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from obelisk.store import NO_STREAM
from obelisk.store._jobs import WriteJob
from obelisk.store._pg_schema import AnyConnection
from obelisk.store.postgres import PostgresEventStore
from obelisk.testing import ContractDeposited


@pytest.fixture
async def store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    async with PostgresEventStore(postgres_dsn, schema=pg_schema) as opened:
        yield opened


def _record_statement_tasks(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> list[asyncio.Task[object] | None]:
    """Note the task each append statement runs in."""
    writer = store._writer
    assert writer is not None
    tasks: list[asyncio.Task[object] | None] = []
    commit_on = writer._commit_on

    async def recording(conn: AnyConnection, jobs: list[WriteJob]) -> None:
        tasks.append(asyncio.current_task())
        await commit_on(conn, jobs)

    monkeypatch.setattr(writer, "_commit_on", recording)
    return tasks


async def test_an_append_made_alone_runs_in_the_callers_own_task(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append("warm", [ContractDeposited(amount=0)], NO_STREAM)
    tasks = _record_statement_tasks(store, monkeypatch)

    for n in range(1, 4):
        result = await store.append(f"s-{n}", [ContractDeposited(amount=n)], NO_STREAM)
        assert result.version == 1

    me = asyncio.current_task()
    assert tasks == [me, me, me]
    for n in range(1, 4):
        assert [e.event for e in await store.read_stream(f"s-{n}")] == [ContractDeposited(amount=n)]


async def test_concurrent_appends_are_batched_and_lone_appends_come_back_to_the_fast_path(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append("warm", [ContractDeposited(amount=0)], NO_STREAM)
    tasks = _record_statement_tasks(store, monkeypatch)

    results = await asyncio.gather(
        *(store.append(f"c-{n}", [ContractDeposited(amount=n)], NO_STREAM) for n in range(20))
    )
    assert [r.version for r in results] == [1] * 20
    # The first caller found the writer idle; the other nineteen, arriving while its
    # statement ran, went to the writer's batches: a handful of statements, not twenty.
    assert 2 <= len(tasks) <= 4, len(tasks)
    assert all(task is not asyncio.current_task() for task in tasks[1:])

    # Right after a burst the next append is batched (it may have company); once one ran
    # alone, the caller's task takes the statement again.
    tasks.clear()
    await store.append("after-1", [ContractDeposited(amount=1)], NO_STREAM)
    await store.append("after-2", [ContractDeposited(amount=2)], NO_STREAM)
    assert tasks[0] is not asyncio.current_task()
    assert tasks[1] is asyncio.current_task()
    assert await store.stream_version("after-2") == 1
