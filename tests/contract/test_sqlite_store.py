"""The EventStore contract, run against SQLiteEventStore, plus SQLite-only checks."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from obelisk.errors import StoreError
from obelisk.store import EventCodec, EventStore, MsgPackCodec, SQLiteEventStore
from obelisk.store._sqlite_schema import SCHEMA_VERSION
from obelisk.testing import ContractDeposited, DurableEventStoreContract

_files = itertools.count()


def deposits(*amounts: int) -> list[ContractDeposited]:
    return [ContractDeposited(amount=amount) for amount in amounts]


class TestSQLiteEventStore(DurableEventStoreContract):
    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        # A new file per call: the state machine asks for one store per example.
        store = SQLiteEventStore(self.tmp_path / f"events-{next(_files)}.db", codec=codec)
        await store.open()
        return store

    async def reopen_store(self, store: EventStore) -> EventStore:
        assert isinstance(store, SQLiteEventStore)
        reopened = SQLiteEventStore(store.path, codec=store.codec)
        await reopened.open()
        return reopened


async def test_the_schema_version_is_recorded_in_obelisk_meta(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as store:
        await store.append("acct-1", deposits(1))
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT key, value FROM obelisk_meta").fetchall())
    conn.close()
    assert rows["schema_version"] == str(SCHEMA_VERSION)
    assert rows["codec"] == "json"


async def test_opening_a_database_with_another_codec_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as store:
        await store.append("acct-1", deposits(1))
    other = SQLiteEventStore(path, codec=MsgPackCodec())
    with pytest.raises(StoreError, match="json"):
        await other.open()
    await other.close()
    # The refused open changed nothing: the original codec still reads the events.
    async with SQLiteEventStore(path) as store:
        assert [e.version for e in await store.read_stream("acct-1")] == [1]


async def test_a_database_created_with_msgpack_reopens_with_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path, codec=MsgPackCodec()) as store:
        await store.append("acct-1", deposits(1, 2))
    async with SQLiteEventStore(path, codec=MsgPackCodec()) as store:
        assert await store.read_stream_events("acct-1") == deposits(1, 2)
    with pytest.raises(StoreError, match="msgpack"):
        await SQLiteEventStore(path).open()


async def test_a_database_of_schema_version_1_is_migrated_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path) as store:
        await store.append("acct-1", deposits(1, 2))
    # Make it what the first release left: no snapshot table, no trace column, version 1.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE obelisk_snapshots")
        conn.execute("ALTER TABLE obelisk_events DROP COLUMN trace_context")
        conn.execute("UPDATE obelisk_meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()

    async with SQLiteEventStore(path) as store:
        assert [e.event for e in await store.read_stream("acct-1")] == deposits(1, 2)
        assert await store.load_snapshot("acct-1") is None
    with sqlite3.connect(path) as conn:
        version = conn.execute(
            "SELECT value FROM obelisk_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert version == str(SCHEMA_VERSION) == "3"
    assert "obelisk_snapshots" in tables
