"""A read store never holds a value it cannot give back: NaN and infinity in read models.

Before this change, NaN in a ``float`` column on SQLite was stored as NULL, and NaN or
infinity inside a ``json`` value as ``null`` on both databases: the write succeeded and the
row read back different. Now such a batch is refused with UnstorableValue and nothing of it
is written; PostgreSQL's double precision keeps NaN and infinity, so there they are stored.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from obelisk.errors import UnstorableValue
from obelisk.projections import ReadStore, Table
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.projections.tables import ChangeSet

READINGS = Table(
    "readings", {"id": "text", "celsius": "float", "doc": "json"}, key="id"
)  # fmt: skip
Opener = Callable[[], ReadStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        return lambda: PostgresReadStore(dsn, schema=schema)
    return lambda: SQLiteReadStore(tmp_path / "read.db")


@pytest.fixture
async def store(opener: Opener, loop_errors: list[object]) -> AsyncIterator[ReadStore]:
    async with opener() as opened:
        await opened.register("readings", 1, 1, [READINGS])
        yield opened


async def write(store: ReadStore, *rows: dict[str, Any]) -> None:
    changes = ChangeSet(READINGS)
    for row in rows:
        changes.upsert(row)
    async with store.transaction() as tx:
        await tx.flush([(changes, store.physical(READINGS, 1))])


async def ids(store: ReadStore) -> list[str]:
    rows = await store.query(f"SELECT id FROM {store.physical(READINGS, 1)} ORDER BY id")
    return [row[0] for row in rows]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
async def test_nan_or_infinity_inside_a_json_value_is_refused_and_nothing_is_written(
    store: ReadStore, bad: float
) -> None:
    with pytest.raises(UnstorableValue, match=r"readings\.doc: .* cannot be stored as JSON"):
        await write(store, {"id": "a"}, {"id": "b", "doc": {"points": [1.0, bad]}})
    assert await ids(store) == []


async def test_none_inside_a_json_value_is_stored_as_null(store: ReadStore) -> None:
    await write(store, {"id": "a", "doc": {"points": [1.5, None]}})
    assert await ids(store) == ["a"]


async def test_nan_in_a_float_column_is_refused_on_sqlite_and_kept_on_postgres(
    store: ReadStore,
) -> None:
    if isinstance(store, SQLiteReadStore):
        with pytest.raises(UnstorableValue, match="would read back as NULL"):
            await write(store, {"id": "a", "celsius": float("nan")})
        assert await ids(store) == []
    else:
        await write(store, {"id": "a", "celsius": float("nan")})
        (value,) = await store.query(f"SELECT celsius FROM {store.physical(READINGS, 1)}")
        assert math.isnan(value[0])


async def test_a_nan_increment_of_a_float_column_is_refused_on_sqlite(tmp_path: Path) -> None:
    async with SQLiteReadStore(tmp_path / "read.db") as store:
        await store.register("readings", 1, 1, [READINGS])
        await write(store, {"id": "a", "celsius": 1.0})
        changes = ChangeSet(READINGS)
        changes.add("a", {"celsius": float("nan")})
        with pytest.raises(UnstorableValue):
            async with store.transaction() as tx:
                await tx.flush([(changes, store.physical(READINGS, 1))])
        rows = await store.query(f"SELECT celsius FROM {store.physical(READINGS, 1)}")
        assert rows[0][0] == 1.0
