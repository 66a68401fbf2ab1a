"""The writer's cache of stream heads never lets a stale expected version through.

Two stores on one file stand for two processes: each has its own write connection, so a
commit by one is "another connection" to the other, exactly as across processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from obelisk import NO_STREAM, ConcurrencyError, Event, SQLiteEventStore


class CacheTicked(Event):
    event_type = "test_head_cache.Ticked"
    n: int


def ticks(*values: int) -> list[Event]:
    return [CacheTicked(n=v) for v in values]


async def test_no_stream_on_a_stream_another_writer_created_fails_alone(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as ours, SQLiteEventStore(path) as theirs:
        await ours.append("warm-up", ticks(0), NO_STREAM)
        await theirs.append("taken", ticks(1), NO_STREAM)

        outcomes = await asyncio.gather(
            ours.append("taken", ticks(2), NO_STREAM),  # our cache has never seen "taken"
            *(ours.append(f"free-{i}", ticks(i), NO_STREAM) for i in range(10)),
            return_exceptions=True,
        )

        assert isinstance(outcomes[0], ConcurrencyError)
        assert outcomes[0].actual == 1
        assert all(not isinstance(o, BaseException) for o in outcomes[1:])
        assert [e.event for e in await ours.read_stream("taken")] == ticks(1)
        assert await ours.last_position() == 12


async def test_a_head_cached_by_one_writer_is_dropped_when_another_writer_commits(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as ours, SQLiteEventStore(path) as theirs:
        await ours.append("shared", ticks(1), NO_STREAM)  # ours caches shared@1
        await theirs.append("shared", ticks(2), 1)  # now at 2, behind our cache's back

        with pytest.raises(ConcurrencyError) as info:
            await ours.append("shared", ticks(3), 1)
        assert info.value.actual == 2

        result = await ours.append("shared", ticks(3), 2)
        assert result.version == 3
        assert [e.event for e in await theirs.read_stream("shared")] == ticks(1, 2, 3)


async def test_concurrent_writers_on_one_file_keep_every_stream_gap_free(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as first, SQLiteEventStore(path) as second:

        async def writer(store: SQLiteEventStore, name: str) -> int:
            successes = 0
            for step in range(40):
                stream = f"s-{step % 4}"
                version = await store.stream_version(stream)
                try:
                    await store.append(stream, ticks(step), version)
                    successes += 1
                except ConcurrencyError:
                    pass
            return successes

        counts = await asyncio.gather(*(writer(s, n) for s, n in [(first, "a"), (second, "b")]))
        stored = await first.read_all(after=0, limit=1000)
        assert len(stored) == sum(counts)
        assert [e.position for e in stored] == list(range(1, len(stored) + 1))
        for stream in {e.stream_id for e in stored}:
            versions = [e.version for e in stored if e.stream_id == stream]
            assert versions == list(range(1, len(versions) + 1))
