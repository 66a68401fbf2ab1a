"""How the PostgreSQL writer turns appends into statements.

Appends made one at a time run in their caller's task; concurrent ones are batched, the
writer handing an append to its own task only when that buys a batch. A batch of
one-event appends runs the flat statement, any other batch the general one: in both, an
append whose version check fails fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from obelisk.errors import ConcurrencyError
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


@pytest.mark.parametrize("events_each", [1, 3], ids=["flat-statement", "general-statement"])
async def test_a_stale_append_in_a_batch_fails_alone_and_the_others_commit(
    store: PostgresEventStore, events_each: int
) -> None:
    streams = [f"b-{n}" for n in range(12)]
    for stream in streams:
        await store.append(stream, [ContractDeposited(amount=0)], NO_STREAM)
    writer = store._writer
    assert writer is not None
    batches_before = writer.batches

    def events(n: int) -> list[ContractDeposited]:
        return [ContractDeposited(amount=n * 10 + k) for k in range(events_each)]

    # Even streams are appended at their head; odd ones claim to be new, which is stale.
    outcomes = await asyncio.gather(
        *(
            store.append(stream, events(n), 1 if n % 2 == 0 else NO_STREAM)
            for n, stream in enumerate(streams)
        ),
        return_exceptions=True,
    )

    assert writer.batches - batches_before < len(streams), "the appends were never batched"
    positions = []
    for n, (stream, outcome) in enumerate(zip(streams, outcomes, strict=True)):
        stored = await store.read_stream(stream)
        if n % 2 == 0:
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.version == 1 + events_each
            assert [e.event for e in stored[1:]] == events(n)
            assert [e.position for e in stored[1:]] == list(
                range(outcome.first_position, outcome.last_position + 1)
            )
            positions.append(outcome.first_position)
        else:
            assert isinstance(outcome, ConcurrencyError), outcome
            assert (outcome.expected, outcome.actual) == (NO_STREAM, 1)
            assert [e.version for e in stored] == [1]
    assert len(set(positions)) == len(positions)


async def test_an_append_after_a_version_this_writer_saw_still_catches_every_conflict(
    store: PostgresEventStore, postgres_dsn: str, pg_schema: str
) -> None:
    # The writer remembers heads it committed and then inserts the next version without
    # reading the head: the unique index must still refuse what another process took.
    await store.append("k", [ContractDeposited(amount=1)], NO_STREAM)
    await store.append("k", [ContractDeposited(amount=2)], 1)
    async with PostgresEventStore(postgres_dsn, schema=pg_schema) as other:
        await other.append("k", [ContractDeposited(amount=3)], 2)

    with pytest.raises(ConcurrencyError) as stale:
        await store.append("k", [ContractDeposited(amount=99)], 2)
    assert (stale.value.expected, stale.value.actual) == (2, 3)
    # Ahead of the stream: refused, never a gap.
    with pytest.raises(ConcurrencyError) as ahead:
        await store.append("k", [ContractDeposited(amount=99)], 5)
    assert (ahead.value.expected, ahead.value.actual) == (5, 3)
    assert (await store.append("k", [ContractDeposited(amount=4)], 3)).version == 4
    assert [e.version for e in await store.read_stream("k")] == [1, 2, 3, 4]
    assert [e.event for e in await store.read_stream("k")] == [
        ContractDeposited(amount=n) for n in (1, 2, 3, 4)
    ]


async def test_a_batch_after_known_versions_fails_only_the_appends_another_writer_got_to(
    store: PostgresEventStore, postgres_dsn: str, pg_schema: str
) -> None:
    streams = [f"f-{n}" for n in range(10)]
    for stream in streams:  # the writer now knows each head (version 1)
        await store.append(stream, [ContractDeposited(amount=0)], NO_STREAM)
    async with PostgresEventStore(postgres_dsn, schema=pg_schema) as other:
        for stream in streams[::3]:  # another process moves f-0, f-3, f-6, f-9 to 2
            await other.append(stream, [ContractDeposited(amount=-1)], 1)
    writer = store._writer
    assert writer is not None
    batches_before = writer.batches

    outcomes = await asyncio.gather(
        *(store.append(s, [ContractDeposited(amount=n)], 1) for n, s in enumerate(streams)),
        return_exceptions=True,
    )

    assert writer.batches - batches_before < len(streams), "the appends were never batched"
    for n, (stream, outcome) in enumerate(zip(streams, outcomes, strict=True)):
        stored = await store.read_stream(stream)
        if n % 3 == 0:
            assert isinstance(outcome, ConcurrencyError), outcome
            assert (outcome.expected, outcome.actual) == (1, 2)
            assert [e.event for e in stored] == [
                ContractDeposited(amount=0), ContractDeposited(amount=-1),
            ]  # fmt: skip
        else:
            assert not isinstance(outcome, BaseException), outcome
            assert (outcome.version, outcome.first_position) == (2, stored[1].position)
            assert [e.event for e in stored] == [
                ContractDeposited(amount=0), ContractDeposited(amount=n),
            ]  # fmt: skip
