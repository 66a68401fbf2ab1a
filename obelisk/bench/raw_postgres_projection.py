"""The raw asyncpg projection: balances kept by hand from the event table.

What a developer writes without a framework: read the log in pages (the raw catch-up's
envelope query, restricted to the two types the projection handles, as obelisk's runner
asks for), decode and fold each page into per-account changes, then in one transaction
write them with one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT`` and move a
checkpoint row.

The read model lives in its own schema of the same database, written on a second
connection with ``synchronous_commit=off`` — what obelisk's PostgreSQL read store sets on
its own connections — so both sides do the same database work at the same durability.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.raw_sqlite_projection import fold_page
from obelisk.bench.sites import Site
from obelisk.demo.bank import AccountOpened, MoneyDeposited

__all__ = ["project_balances"]

_TYPES = [AccountOpened.event_type, MoneyDeposited.event_type]
_COLUMNS = (
    "position, stream_id, version, event_id, event_type, schema_version, data, "
    "recorded_at, correlation_id, causation_id"
)


async def project_balances(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    dsn: str,
    decoders: Mapping[str, Any],
    location: str,
    page: int,
    passes: int,
) -> Sample:
    """See :meth:`obelisk.bench.baseline.RawBaseline.project_balances`.

    ``connect`` opens a connection the way the raw baseline does (its codecs).
    """
    site = Site("postgresql", location, dsn).beside("read")
    schema = f'"{site.location}"'
    await site.discard()
    events = await connect()
    read = await asyncpg.connect(dsn, timeout=30, server_settings={"synchronous_commit": "off"})
    balances: dict[str, int] = {}
    applied = 0
    try:
        # Untimed, as obelisk's tables are registered before its clock: one fresh table
        # and one checkpoint row per pass.
        await read.execute(
            f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.checkpoints "
            "(name text PRIMARY KEY, position bigint NOT NULL)"
        )
        for number in range(passes):
            await read.execute(
                f"CREATE TABLE {schema}.balances_{number} "
                "(account_id text NOT NULL PRIMARY KEY, balance bigint)"
            )
            await read.execute(
                f"INSERT INTO {schema}.checkpoints VALUES ($1, 0)", f"balances_{number}"
            )
        select = (
            f'SELECT {_COLUMNS} FROM "{location}".obelisk_events '
            "WHERE position > $1 AND event_type = ANY($3::text[]) ORDER BY position LIMIT $2"
        )
        with stopwatch() as watch:
            for number in range(passes):
                applied += await _one_pass(events, read, select, schema, decoders, number, page)
        rows = await read.fetch(f"SELECT account_id, balance FROM {schema}.balances_{passes - 1}")
        balances = {row[0]: row[1] for row in rows}
    finally:
        await events.close()
        await read.close()
        await site.discard()
    return Sample(watch.seconds, applied, balances)


async def _one_pass(
    events: asyncpg.Connection,
    read: asyncpg.Connection,
    select: str,
    schema: str,
    decoders: Mapping[str, Any],
    number: int,
    page: int,
) -> int:
    upsert = (
        f"INSERT INTO {schema}.balances_{number} AS b (account_id, balance) "
        "SELECT * FROM unnest($1::text[], $2::bigint[]) "
        "ON CONFLICT (account_id) DO UPDATE SET balance = b.balance + excluded.balance"
    )
    checkpoint = f"UPDATE {schema}.checkpoints SET position = $1 WHERE name = $2"
    name = f"balances_{number}"
    after = 0
    applied = 0
    while True:
        rows = await events.fetch(select, after, page, _TYPES)
        if not rows:
            return applied
        changes, after = fold_page(rows, decoders)
        async with read.transaction():
            await read.execute(upsert, list(changes), list(changes.values()))
            await read.execute(checkpoint, after, name)
        applied += len(rows)
        if len(rows) < page:
            return applied
