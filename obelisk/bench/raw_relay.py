"""The raw relays: the event table read with the bare driver, published with a bare client.

What a developer writes without a framework to push an event table to a broker: read the
rows after the last position in pages of 1,000 (``sqlite3`` or asyncpg, the same
connection settings as the other raw baselines), and publish each page as one batch —
redis-py: one pipeline of ``XADD`` (one field per entry: the row's columns and its
``data`` bytes, untouched, as one msgpack array — one blob per entry, as obelisk sends)
plus a ``SET`` of the checkpoint; nats-py: one JetStream ``publish_async`` per row (the
same msgpack blob as payload, the event id as ``Nats-Msg-Id``, as obelisk's adapter sends
it), then the page's acks awaited. The event data is never decoded into
events nor re-encoded, and nothing filters duplicates beyond what the server does itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import msgspec

from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.sites import Site

__all__ = ["RowReader", "relay_nats", "relay_redis"]

_COLUMNS: Final = "position, stream_id, version, event_id, event_type, schema_version, data"

Row = tuple[Any, ...]


class RowReader:
    """Pages of event rows after a position, through the bare driver of a site."""

    def __init__(self, fetch: Callable[[int, int], Awaitable[list[Row]]], close: Any) -> None:
        self.fetch = fetch
        self._close = close

    @classmethod
    async def open(cls, site: Site) -> RowReader:
        if site.kind == "sqlite":
            return cls._sqlite(site.location)
        return await cls._postgres(site)

    @classmethod
    def _sqlite(cls, path: str) -> RowReader:
        # The raw SQLite baseline's read settings (WAL, 64 MiB cache, mapped reads).
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA mmap_size = 268435456")
        select = (
            f"SELECT {_COLUMNS} FROM obelisk_events WHERE position > ? ORDER BY position LIMIT ?"
        )

        async def fetch(after: int, limit: int) -> list[Row]:
            return conn.execute(select, (after, limit)).fetchall()

        async def close() -> None:
            conn.close()

        return cls(fetch, close)

    @classmethod
    async def _postgres(cls, site: Site) -> RowReader:
        import asyncpg

        conn = await asyncpg.connect(site.dsn, timeout=30)
        # Event ids as their 16 bytes, as the raw asyncpg baseline reads them.
        await conn.set_type_codec(
            "uuid", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
        )
        select = (
            f'SELECT {_COLUMNS} FROM "{site.location}".obelisk_events '
            "WHERE position > $1 ORDER BY position LIMIT $2"
        )

        async def fetch(after: int, limit: int) -> list[Row]:
            # Records unpack like tuples.
            return cast(list[Row], await conn.fetch(select, after, limit))

        async def close() -> None:
            await conn.close()

        return cls(fetch, close)

    async def close(self) -> None:
        await self._close()


async def relay_redis(site: Site, url: str, key: str, page: int) -> Sample:
    """Publish every row of ``site``'s log to the Redis stream ``key``; ``result`` is the
    stream's length afterwards (the stream and its checkpoint key are deleted)."""
    from obelisk.messaging.redis import redis_client

    encode = msgspec.msgpack.Encoder().encode
    client = redis_client(url)
    reader = await RowReader.open(site)
    published = 0
    try:
        await client.ping()
        with stopwatch() as watch:
            after = 0
            while True:
                rows = await reader.fetch(after, page)
                if not rows:
                    break
                pipe = client.pipeline(transaction=False)
                xadd = pipe.xadd
                for position, stream_id, version, event_id, event_type, schema, data in rows:
                    envelope = (event_id.hex(), event_type, schema, stream_id, version, position)
                    xadd(key, {b"m": encode((*envelope, data))})
                after = rows[-1][0]
                # The checkpoint goes with the page: a restart republishes at most one page.
                pipe.set(key + ":checkpoint", after)
                await pipe.execute()
                published += len(rows)
                if len(rows) < page:
                    break
        length = int(await client.xlen(key))
        await client.delete(key, key + ":checkpoint")
    finally:
        await reader.close()
        await client.aclose()
    return Sample(watch.seconds, published, length)


async def relay_nats(site: Site, url: str, stream: str, subject: str, page: int) -> Sample:
    """Publish every row of ``site``'s log to the JetStream stream ``stream`` (created
    here, untimed, on ``subject``; deleted afterwards); ``result`` is its message count."""
    import nats

    encode = msgspec.msgpack.Encoder().encode
    client = await nats.connect(url)
    reader = await RowReader.open(site)
    published = 0
    try:
        js = client.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        with stopwatch() as watch:
            after = 0
            while True:
                rows = await reader.fetch(after, page)
                if not rows:
                    break
                publish = js.publish_async
                for position, stream_id, version, event_id, event_type, schema, data in rows:
                    ident = event_id.hex()
                    envelope = (ident, event_type, schema, stream_id, version, position, data)
                    # Nats-Msg-Id: the server drops a republished event (its dedupe window).
                    await publish(subject, encode(envelope), headers={"Nats-Msg-Id": ident})
                # The page's acks before the next page (and before a checkpoint would move).
                await js.publish_async_completed()
                after = rows[-1][0]
                published += len(rows)
                if len(rows) < page:
                    break
        info = await js.stream_info(stream)
        length = int(info.state.messages)
        await js.delete_stream(stream)
    finally:
        await reader.close()
        await client.close()
    return Sample(watch.seconds, published, length)
