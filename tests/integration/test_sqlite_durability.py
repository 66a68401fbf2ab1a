"""Durability settings of the SQLite store, and what close/terminate do to queued appends.

``journal_mode`` is stored in the database file, so a fresh raw connection shows it.
``synchronous`` belongs to a connection, so these tests capture the writer thread's own
connection (by wrapping the factory the store hands to its writer) and ask it directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreClosed
from obelisk.store import NO_STREAM, AppendResult, SQLiteEventStore, store_from_url
from obelisk.store._sqlite_writer import SQLiteWriter

from ._helpers import spy_on_writer_connection

_SYNCHRONOUS_FULL = 2
_SYNCHRONOUS_NORMAL = 1


class DurabilityTicked(Event):
    event_type = "test_sqlite_durability.Ticked"
    n: int




def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _raw_pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return _pragma(conn, name)
    finally:
        conn.close()


async def test_the_writer_connection_fsyncs_every_commit_by_default(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    store = SQLiteEventStore(tmp_path / "events.db")
    opened = spy_on_writer_connection(store)
    async with store:
        await store.append("s", [DurabilityTicked(n=1)])
        # The writer is idle between batches, so asking its connection now is safe.
        assert len(opened) == 1
        assert _pragma(opened[0], "synchronous") == _SYNCHRONOUS_FULL
        assert _pragma(opened[0], "journal_mode") == "wal"


async def test_the_writer_connection_uses_synchronous_normal_when_asked(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    store = SQLiteEventStore(tmp_path / "events.db", synchronous="NORMAL")
    opened = spy_on_writer_connection(store)
    async with store:
        await store.append("s", [DurabilityTicked(n=1)])
        assert len(opened) == 1
        assert _pragma(opened[0], "synchronous") == _SYNCHRONOUS_NORMAL


@pytest.mark.parametrize(
    ("synchronous", "expected"), [("FULL", _SYNCHRONOUS_FULL), ("NORMAL", _SYNCHRONOUS_NORMAL)]
)
def test_a_configured_writer_connection_carries_the_synchronous_setting(
    tmp_path: Path, synchronous: str, expected: int
) -> None:
    store = SQLiteEventStore(tmp_path / "events.db", synchronous=synchronous)  # type: ignore[arg-type]
    conn = store._connect_writer()
    try:
        assert _pragma(conn, "synchronous") == expected
    finally:
        conn.close()


async def test_a_store_url_passes_synchronous_normal_to_the_writer(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 'events.db'}?synchronous=normal")
    assert isinstance(store, SQLiteEventStore)
    opened = spy_on_writer_connection(store)
    async with store:
        assert _pragma(opened[0], "synchronous") == _SYNCHRONOUS_NORMAL


async def test_the_database_file_is_in_wal_mode(tmp_path: Path, loop_errors: list[object]) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as store:
        await store.append("s", [DurabilityTicked(n=1)])
        assert _raw_pragma(path, "journal_mode") == "wal"
    # WAL mode is persistent: it is still recorded in the file after the store closed.
    assert _raw_pragma(path, "journal_mode") == "wal"


@pytest.mark.parametrize("synchronous", ["OFF", "EXTRA", "full", "", None])
def test_an_invalid_synchronous_value_raises_value_error(
    tmp_path: Path, synchronous: object
) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteEventStore(tmp_path / "events.db", synchronous=synchronous)  # type: ignore[arg-type]
    assert not (tmp_path / "events.db").exists()


def test_an_invalid_synchronous_value_in_a_url_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        store_from_url(f"sqlite:///{tmp_path / 'events.db'}?synchronous=OFF")


async def test_close_commits_every_append_queued_before_it(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteEventStore(path)
    await store.open()
    tasks = [
        asyncio.create_task(store.append(f"drain-{i}", [DurabilityTicked(n=i)], NO_STREAM))
        for i in range(200)
    ]
    # One turn of the loop lets every task run up to its await, i.e. queue its append.
    await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await store.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(r, AppendResult) for r in results), results
    positions = sorted(r.last_position for r in results if isinstance(r, AppendResult))
    assert positions == list(range(1, 201))

    async with SQLiteEventStore(path) as reopened:
        stored = await reopened.read_all(limit=1000)
        assert len(stored) == 200
        for i, result in enumerate(results):
            assert isinstance(result, AppendResult)
            (event,) = await reopened.read_stream(f"drain-{i}")
            assert event.position == result.last_position
            assert event.event == DurabilityTicked(n=i)


async def test_terminate_fails_queued_appends_with_store_closed(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteEventStore(path, busy_timeout=30)
    opened = spy_on_writer_connection(store)
    await store.open()
    writer = store._writer
    assert isinstance(writer, SQLiteWriter)
    # The writer is idle (waiting on its queue), so its connection can be configured
    # from here: the trace callback tells us when the writer starts its next batch.
    batch_started = threading.Event()
    opened[0].set_trace_callback(
        lambda sql: batch_started.set() if sql.startswith("BEGIN IMMEDIATE") else None
    )

    # Hold the write lock from another connection so the writer thread is stuck on its
    # first batch; everything submitted after that is certainly still queued.
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        # Two appends in one loop turn: the writer thread commits them (a lone append
        # may be committed on the loop itself, which would block this test).
        first = [
            asyncio.create_task(store.append(f"first-{i}", [DurabilityTicked(n=i)]))
            for i in range(2)
        ]
        assert await asyncio.to_thread(batch_started.wait, 30)
        queued = [
            asyncio.create_task(store.append(f"queued-{i}", [DurabilityTicked(n=i)]))
            for i in range(50)
        ]
        await asyncio.sleep(0)  # let every task queue its append
        store.terminate()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
        first_outcomes = await asyncio.gather(*first, return_exceptions=True)
        await asyncio.to_thread(writer.join, 30)
    assert not writer.alive

    assert all(isinstance(o, StoreClosed) for o in outcomes), outcomes
    # The batch already in the writer's hands is finished, not abandoned halfway.
    assert all(isinstance(o, AppendResult) for o in first_outcomes), first_outcomes
    with pytest.raises(StoreClosed):
        await store.append("late", [DurabilityTicked(n=1)])

    async with SQLiteEventStore(path) as reopened:
        assert await reopened.last_position() == 2
        assert sorted(e.stream_id for e in await reopened.read_all()) == ["first-0", "first-1"]
        for i in range(50):
            assert await reopened.stream_version(f"queued-{i}") == 0
