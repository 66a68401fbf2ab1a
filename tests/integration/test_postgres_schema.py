"""PostgresEventStore's schema: creation, migration, metadata and the position offset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreError
from obelisk.store import NO_STREAM, EventCodec, JsonCodec, MsgPackCodec, _pg_schema
from obelisk.store._pg_schema import INDEX_BITS, SCHEMA_VERSION, Names
from obelisk.store.postgres import PostgresEventStore


class PgSchemaNoted(Event):
    event_type = "test_postgres_schema.Noted"
    n: int


def _store(
    dsn: str, schema: str, *, codec: EventCodec | None = None, prefix: str = "obelisk_"
) -> PostgresEventStore:
    return PostgresEventStore(dsn, schema=schema, prefix=prefix, codec=codec, pool_min_size=1)


@pytest.fixture
async def sql(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for looking at (and tampering with) the tables."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _meta(sql: asyncpg.Connection, schema: str) -> dict[str, str]:
    rows = await sql.fetch(f'SELECT key, value FROM "{schema}"."obelisk_meta"')
    return {row["key"]: row["value"] for row in rows}


async def test_stores_opening_a_new_schema_at_once_all_work_and_migrate_it_once(
    postgres_dsn: str,
    pg_schema: str,
    sql: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    loop_errors: list[object],
) -> None:
    ran: list[str] = []

    def counted(
        migration: Callable[[Names], tuple[str, ...]],
    ) -> Callable[[Names], tuple[str, ...]]:
        def run(names: Names) -> tuple[str, ...]:
            ran.append(names.schema_name)
            return migration(names)

        return run

    monkeypatch.setattr(
        _pg_schema, "MIGRATIONS", tuple((v, counted(m)) for v, m in _pg_schema.MIGRATIONS)
    )
    stores = [_store(postgres_dsn, pg_schema) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        for i, store in enumerate(stores):
            await store.append(f"schema-{i}", [PgSchemaNoted(n=i)], NO_STREAM)
        for store in stores:
            assert {e.stream_id for e in await store.read_all()} == {
                f"schema-{i}" for i in range(4)
            }
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    assert ran == [pg_schema] * len(_pg_schema.MIGRATIONS)
    # One transaction created every table.
    creators = await sql.fetch(
        "SELECT DISTINCT c.xmin::text FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
        pg_schema,
    )
    assert len(creators) == 1


async def test_reopening_a_store_keeps_its_events(
    postgres_dsn: str, pg_schema: str, loop_errors: list[object]
) -> None:
    async with _store(postgres_dsn, pg_schema) as first:
        written = await first.append("schema-kept", [PgSchemaNoted(n=1), PgSchemaNoted(n=2)])
    async with _store(postgres_dsn, pg_schema) as again:
        events = await again.read_stream("schema-kept")
        later = await again.append("schema-kept", [PgSchemaNoted(n=3)], expected_version=2)
    assert [e.event for e in events] == [PgSchemaNoted(n=1), PgSchemaNoted(n=2)]
    assert events[-1].position == written.last_position
    assert later.first_position > written.last_position


async def test_meta_records_the_schema_version_and_the_codec(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection
) -> None:
    async with _store(postgres_dsn, pg_schema, codec=MsgPackCodec()):
        pass
    meta = await _meta(sql, pg_schema)
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["codec"] == MsgPackCodec().name


async def test_opening_with_another_codec_fails_clearly_and_leaves_the_store_usable(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with _store(postgres_dsn, pg_schema, codec=JsonCodec()) as store:
        await store.append("schema-codec", [PgSchemaNoted(n=1)])
    wrong = _store(postgres_dsn, pg_schema, codec=MsgPackCodec())
    with pytest.raises(StoreError, match=JsonCodec().name):
        await wrong.open()
    assert wrong._pool is None
    # Nothing of the failed open stuck: the codec is the creator's, the pool is gone.
    assert (await _meta(sql, pg_schema))["codec"] == JsonCodec().name
    async with _store(postgres_dsn, pg_schema, codec=JsonCodec()) as store:
        assert len(await store.read_stream("schema-codec")) == 1


async def test_opening_a_schema_from_a_newer_obelisk_fails_clearly(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection
) -> None:
    async with _store(postgres_dsn, pg_schema):
        pass
    await sql.execute(
        f"UPDATE \"{pg_schema}\".obelisk_meta SET value = $1 WHERE key = 'schema_version'",
        str(SCHEMA_VERSION + 1),
    )
    with pytest.raises(StoreError, match="newer"):
        await _store(postgres_dsn, pg_schema).open()


async def test_the_prefix_names_the_tables_and_their_indexes(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection
) -> None:
    async with _store(postgres_dsn, pg_schema, prefix="pfx_"):
        pass
    tables = await sql.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", pg_schema
    )
    indexes = await sql.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname", pg_schema
    )
    assert [row[0] for row in tables] == ["pfx_events", "pfx_meta", "pfx_snapshots"]
    assert [row[0] for row in indexes] == [
        "pfx_events_event_id",
        "pfx_events_pkey",
        "pfx_events_stream_version",
        "pfx_meta_pkey",
        "pfx_snapshots_pkey",
    ]


async def test_after_a_restore_with_higher_positions_new_appends_sort_after_them(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with _store(postgres_dsn, pg_schema) as store:
        payload = store.codec.encode(PgSchemaNoted(n=1))
    # As if restored from a cluster whose transaction ids ran a million ahead of this one.
    next_xid = await sql.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    restored = (next_xid + 1_000_000) << INDEX_BITS
    await sql.execute(
        f'INSERT INTO "{pg_schema}".obelisk_events (position, stream_id, version, event_id, '
        "event_type, schema_version, data, recorded_at) "
        "VALUES ($1, 'schema-restored', 1, gen_random_uuid(), $2, 1, $3, 0)",
        restored,
        PgSchemaNoted.event_type,
        payload,
    )

    async with _store(postgres_dsn, pg_schema) as reopened:
        new = await reopened.append("schema-new", [PgSchemaNoted(n=2)])
        more = await reopened.append("schema-restored", [PgSchemaNoted(n=3)], expected_version=1)
        events = await reopened.read_all()
    assert new.first_position > restored
    assert more.first_position > new.first_position
    assert [(e.position, e.event) for e in events] == [
        (restored, PgSchemaNoted(n=1)),
        (new.first_position, PgSchemaNoted(n=2)),
        (more.first_position, PgSchemaNoted(n=3)),
    ]
    offset = int((await _meta(sql, pg_schema))["xid_offset"])
    assert offset > 0

    # The offset is kept for good: opening again does not lower it.
    async with _store(postgres_dsn, pg_schema) as third:
        last = await third.append("schema-new", [PgSchemaNoted(n=4)])
    assert last.first_position > more.first_position
    assert int((await _meta(sql, pg_schema))["xid_offset"]) == offset


async def test_a_schema_of_version_1_is_migrated_and_keeps_its_events(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection
) -> None:
    async with _store(postgres_dsn, pg_schema) as store:
        await store.append("acct-1", [PgSchemaNoted(n=1)], NO_STREAM)
    # Make it what the first release left: no snapshot table, no trace column, version 1.
    await sql.execute(f'DROP TABLE "{pg_schema}"."obelisk_snapshots"')
    await sql.execute(f'ALTER TABLE "{pg_schema}"."obelisk_events" DROP COLUMN trace_context')
    await sql.execute(
        f"UPDATE \"{pg_schema}\".\"obelisk_meta\" SET value = '1' WHERE key = 'schema_version'"
    )

    async with _store(postgres_dsn, pg_schema) as store:
        assert [e.event for e in await store.read_stream("acct-1")] == [PgSchemaNoted(n=1)]
        assert await store.load_snapshot("acct-1") is None
    assert (await _meta(sql, pg_schema))["schema_version"] == str(SCHEMA_VERSION) == "3"
