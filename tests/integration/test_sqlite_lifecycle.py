"""Opening and closing the SQLite store more than once, and at the same time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from obelisk import NO_STREAM, Event, SQLiteEventStore


class LifecycleTicked(Event):
    event_type = "test_sqlite_lifecycle.Ticked"
    n: int


def commit_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "obelisk-sqlite-commit")


async def test_concurrent_opens_build_one_writer(tmp_path: Path, loop_errors: list[object]) -> None:
    before = commit_threads()
    store = SQLiteEventStore(tmp_path / "events.db")
    await asyncio.gather(*(store.open() for _ in range(5)))
    try:
        assert commit_threads() == before + 1
        await store.append("s-1", [LifecycleTicked(n=1)], NO_STREAM)
    finally:
        await store.close()
    assert commit_threads() == before


async def test_a_store_reopens_after_close_and_keeps_its_events(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    store = SQLiteEventStore(tmp_path / "events.db")
    for round_ in range(3):
        await store.open()
        await store.append("s-1", [LifecycleTicked(n=round_)], round_)
        await store.close()
    async with store:
        assert [e.event for e in await store.read_stream("s-1")] == [
            LifecycleTicked(n=0),
            LifecycleTicked(n=1),
            LifecycleTicked(n=2),
        ]
