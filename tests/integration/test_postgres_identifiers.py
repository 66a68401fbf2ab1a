"""Why names are refused at 63 bytes, shown on a real PostgreSQL: it cuts longer
identifiers without a word (two read-store schemas alike up to byte 63 were one schema, and
the second projection in it applied 0 events), and it refuses NOTIFY channels past 63
bytes (a store whose schema and prefix made one could never wake its subscribers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from obelisk.errors import ValidationError
from obelisk.projections import read_store_from_url
from obelisk.store import store_from_url
from obelisk.store.postgres import PostgresEventStore


@pytest.fixture
async def sql(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_two_read_store_schemas_alike_up_to_byte_63_are_refused_not_merged(
    postgres_dsn: str, sql: asyncpg.Connection
) -> None:
    first, second = "r" * 63 + "_one", "r" * 63 + "_two"
    # What PostgreSQL would have made of them: one and the same schema.
    cut = await sql.fetch("SELECT $1::text::name AS a, $2::text::name AS b", first, second)
    assert cut[0]["a"] == cut[0]["b"] == "r" * 63
    for schema in (first, second):
        with pytest.raises(ValidationError, match=f"schema '{schema}' is refused"):
            read_store_from_url(f"{postgres_dsn}?schema={schema}")


async def test_a_store_whose_notify_channel_postgresql_refuses_is_itself_refused(
    postgres_dsn: str, sql: asyncpg.Connection
) -> None:
    schema, prefix = "s" * 40, "p" * 20
    channel = f"{schema}.{prefix}events"  # the store's wake-up channel: 67 bytes
    with pytest.raises(asyncpg.PostgresError, match="channel name too long"):
        await sql.execute("SELECT pg_notify($1, '')", channel)
    with pytest.raises(ValidationError, match="63 bytes"):
        PostgresEventStore(postgres_dsn, schema=schema, prefix=prefix)
    with pytest.raises(ValidationError, match="63 bytes"):
        store_from_url(f"{postgres_dsn}?schema={schema}&prefix={prefix}")
