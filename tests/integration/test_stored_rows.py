"""Damaged rows in a real SQLite file: reads fail naming the row, and the row stays as it is.

Each test writes events through the store, then damages one row behind its back with a
plain ``sqlite3`` connection, as a bad migration, a manual edit or a removed event class
would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from obelisk.application import Application
from obelisk.domain import Aggregate, Event
from obelisk.errors import AggregateNotFound, CorruptEvent, UnknownEventType
from obelisk.store import JsonCodec, MsgPackCodec, SQLiteEventStore
from obelisk.store.base import EventStore


class ParcelRegistered(Event):
    event_type = "integration_rows.ParcelRegistered"
    sender: str


class ParcelScanned(Event):
    event_type = "integration_rows.ParcelScanned"
    depot: str
    weight_grams: int


class Parcel(Aggregate):
    sender: str = ""
    scans: int = 0

    def apply_registered(self, event: ParcelRegistered) -> None:
        self.sender = event.sender

    def apply_scanned(self, event: ParcelScanned) -> None:
        self.scans += 1


STREAM = "parcel-1"
_ROW = (
    "SELECT position, stream_id, version, hex(event_id), event_type, schema_version, "
    "typeof(data), hex(data), recorded_at, correlation_id, causation_id FROM obelisk_events "
)

Reader = Callable[[EventStore], Awaitable[Any]]


async def _read_stream(store: EventStore) -> Any:
    return await store.read_stream(STREAM)


async def _read_stream_events(store: EventStore) -> Any:
    return await store.read_stream_events(STREAM)


async def _read_all(store: EventStore) -> Any:
    return await store.read_all()


READERS = pytest.mark.parametrize(
    "read", [_read_stream, _read_stream_events, _read_all], ids=lambda f: f.__name__.strip("_")
)


class Parcels:
    """A database file with one three-event stream, and raw access to its rows."""

    def __init__(self, path: Path, codec_name: str) -> None:
        self.path = path
        self.codec_name = codec_name
        self.positions: dict[int, int] = {}

    def open_store(self) -> SQLiteEventStore:
        codec = JsonCodec() if self.codec_name == "json" else MsgPackCodec()
        return SQLiteEventStore(self.path, codec=codec)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with closing(sqlite3.connect(self.path)) as conn:
            conn.execute(sql, params)
            conn.commit()

    def table(self) -> list[tuple[Any, ...]]:
        """Every event row, every column, with payloads and ids as hex: a byte-exact dump."""
        with closing(sqlite3.connect(self.path)) as conn:
            return conn.execute(_ROW + "ORDER BY position").fetchall()

    def row(self, version: int) -> tuple[Any, ...]:
        with closing(sqlite3.connect(self.path)) as conn:
            found: tuple[Any, ...] = conn.execute(
                _ROW + "WHERE stream_id = ? AND version = ?", (STREAM, version)
            ).fetchone()
            return found


@pytest.fixture(params=["json", "msgpack"])
async def parcels(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> Parcels:
    db = Parcels(tmp_path / "parcels.db", request.param)
    async with db.open_store() as store:
        # Another stream first, so positions and versions differ in the error messages.
        await store.append("other", [ParcelRegistered(sender="zed")], 0)
        result = await store.append(
            STREAM,
            [
                ParcelRegistered(sender="ann"),
                ParcelScanned(depot="north", weight_grams=900),
                ParcelScanned(depot="south", weight_grams=900),
            ],
            0,
            stream_type="Parcel",
            correlation_id="corr-rows",
        )
    db.positions = {v: result.first_position + v - 1 for v in (1, 2, 3)}
    assert db.positions == {1: 2, 2: 3, 3: 4}
    return db


@pytest.fixture
async def store(parcels: Parcels) -> AsyncIterator[SQLiteEventStore]:
    async with parcels.open_store() as opened:
        yield opened


def _assert_names_row(error: Exception, stream_id: str, version: int, position: int) -> None:
    assert getattr(error, "stream_id", None) == stream_id
    assert getattr(error, "version", None) == version
    assert getattr(error, "position", None) == position
    message = str(error)
    assert repr(stream_id) in message
    assert f"version {version}" in message
    assert f"position {position}" in message


@READERS
async def test_a_corrupt_payload_raises_corrupt_event_and_the_row_is_left_unchanged(
    parcels: Parcels, store: SQLiteEventStore, read: Reader
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET data = x'ff00' WHERE stream_id = ? AND version = 2", (STREAM,)
    )
    damaged = parcels.table()
    assert parcels.row(2)[6:8] == ("blob", "FF00")

    with pytest.raises(CorruptEvent) as info:
        await read(store)
    _assert_names_row(info.value, STREAM, 2, parcels.positions[2])
    assert "integration_rows.ParcelScanned" in str(info.value)

    # A second attempt fails the same way: nothing was cached, skipped or repaired.
    with pytest.raises(CorruptEvent):
        await read(store)
    assert parcels.table() == damaged


async def test_rows_before_a_corrupt_one_stay_readable(
    parcels: Parcels, store: SQLiteEventStore
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET data = x'ff00' WHERE stream_id = ? AND version = 3", (STREAM,)
    )
    readable = await store.read_stream(STREAM, to_version=2)
    assert [stored.event for stored in readable] == [
        ParcelRegistered(sender="ann"),
        ParcelScanned(depot="north", weight_grams=900),
    ]
    assert [e.sender for e in await store.read_stream_events("other")] == ["zed"]  # type: ignore[attr-defined]
    first_two = await store.read_all(limit=3)
    assert [stored.position for stored in first_two] == [1, 2, 3]


@READERS
async def test_an_unknown_event_type_raises_unknown_event_type_and_the_row_is_left_unchanged(
    parcels: Parcels, store: SQLiteEventStore, read: Reader
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET event_type = 'integration_rows.Vanished' "
        "WHERE stream_id = ? AND version = 3",
        (STREAM,),
    )
    damaged = parcels.table()

    with pytest.raises(UnknownEventType) as info:
        await read(store)
    assert info.value.type_name == "integration_rows.Vanished"
    _assert_names_row(info.value, STREAM, 3, parcels.positions[3])
    assert "integration_rows.Vanished" in str(info.value)
    assert parcels.table() == damaged


@READERS
async def test_an_inserted_row_of_an_unknown_type_raises_unknown_event_type(
    parcels: Parcels, store: SQLiteEventStore, read: Reader
) -> None:
    # A row written by a newer deployment with an event class this code does not have.
    parcels.execute(
        "INSERT INTO obelisk_events (position, stream_id, version, event_id, event_type, "
        "schema_version, data, recorded_at, correlation_id, causation_id) "
        "VALUES (5, ?, 4, randomblob(16), 'integration_rows.FromTheFuture', 1, "
        "CAST('{}' AS BLOB), 0.0, NULL, NULL)",
        (STREAM,),
    )
    damaged = parcels.table()

    with pytest.raises(UnknownEventType) as info:
        await read(store)
    assert info.value.type_name == "integration_rows.FromTheFuture"
    _assert_names_row(info.value, STREAM, 4, 5)
    assert parcels.table() == damaged


@READERS
async def test_a_row_from_a_newer_schema_version_raises_corrupt_event(
    parcels: Parcels, store: SQLiteEventStore, read: Reader
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET schema_version = 99 WHERE stream_id = ? AND version = 2",
        (STREAM,),
    )
    damaged = parcels.table()

    with pytest.raises(CorruptEvent, match="newer") as info:
        await read(store)
    _assert_names_row(info.value, STREAM, 2, parcels.positions[2])
    assert parcels.table() == damaged


async def test_the_application_surfaces_a_corrupt_row_and_writes_nothing(
    parcels: Parcels, store: SQLiteEventStore
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET data = x'ff00' WHERE stream_id = ? AND version = 1", (STREAM,)
    )
    damaged = parcels.table()
    async with Application(store) as app:
        with pytest.raises(CorruptEvent) as info:
            await app.get(Parcel, STREAM)
        _assert_names_row(info.value, STREAM, 1, parcels.positions[1])
        with pytest.raises(CorruptEvent):
            async with app.unit_of_work() as uow:
                await uow.get(Parcel, STREAM)
        with pytest.raises(AggregateNotFound):
            await app.get(Parcel, "never-written")
    assert parcels.table() == damaged


async def test_a_damaged_row_survives_a_reopen_and_later_appends_byte_for_byte(
    parcels: Parcels,
) -> None:
    parcels.execute(
        "UPDATE obelisk_events SET data = x'ff00' WHERE stream_id = ? AND version = 2", (STREAM,)
    )
    parcels.execute(
        "UPDATE obelisk_events SET event_type = 'integration_rows.Vanished' "
        "WHERE stream_id = ? AND version = 3",
        (STREAM,),
    )
    damaged = parcels.table()

    async with parcels.open_store() as store:
        with pytest.raises(CorruptEvent):
            await store.read_stream(STREAM)
        result = await store.append(STREAM, [ParcelScanned(depot="east", weight_grams=1)], 3)
        assert (result.version, result.first_position) == (4, 5)
    async with parcels.open_store() as store:
        assert await store.stream_version(STREAM) == 4
        with pytest.raises(CorruptEvent):
            await store.read_stream_events(STREAM)

    after = parcels.table()
    assert after[: len(damaged)] == damaged
    assert len(after) == len(damaged) + 1
    assert parcels.row(2)[6:8] == ("blob", "FF00")
    assert parcels.row(3)[4] == "integration_rows.Vanished"


async def test_the_undamaged_rows_round_trip_with_their_envelopes(
    parcels: Parcels, store: SQLiteEventStore
) -> None:
    # The control for the damage tests: the same file reads back whole before any damage.
    stored = await store.read_stream(STREAM)
    assert [s.event for s in stored] == [
        ParcelRegistered(sender="ann"),
        ParcelScanned(depot="north", weight_grams=900),
        ParcelScanned(depot="south", weight_grams=900),
    ]
    assert [(s.version, s.position) for s in stored] == [(1, 2), (2, 3), (3, 4)]
    assert {s.correlation_id for s in stored} == {"corr-rows"}
    raw = parcels.row(2)
    assert raw[3] == stored[1].raw_event_id.hex().upper()
    assert raw[4] == "integration_rows.ParcelScanned"
