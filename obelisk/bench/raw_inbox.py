"""The raw inbox worker: bare redis-py reading a stream, bare asyncpg handling each entry.

What a developer writes without a framework: one task reads the stream with
``XREADGROUP`` (blocking, at most ``4 x concurrency`` entries waiting, as obelisk's worker
keeps) and acknowledges handled entries with one ``XACK`` before each read; entries are
shared among ``concurrency`` handler tasks by their key's hash (one key, one task: per-key
order), each with its own connection (``synchronous_commit=off``, as obelisk's read store
sets). A handler runs one transaction per entry: the inbox ``INSERT ... ON CONFLICT DO
NOTHING`` and, when it inserted, the balance ``UPDATE``.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from typing import Any, Final

from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.sites import Site

__all__ = ["Payment", "handle_inbox"]

Payment = tuple[str, str, int]  # message id, key (account), amount
_GROUP: Final = "raw"


async def _setup(
    conns: list[Any], client: Any, schema: str, key: str, payments: Sequence[Payment]
) -> None:
    """Untimed, as for obelisk: tables, balance rows, the entries on the stream, the group."""
    conn = conns[0]
    await conn.execute(
        f"CREATE SCHEMA {schema}; "
        f"CREATE TABLE {schema}.inbox (consumer text NOT NULL, message_id text NOT NULL, "
        "handled_at float8 NOT NULL, PRIMARY KEY (consumer, message_id)); "
        f"CREATE TABLE {schema}.balances (account_id text PRIMARY KEY, balance bigint NOT NULL)"
    )
    accounts = sorted({account for _, account, _ in payments})
    await conn.execute(f"INSERT INTO {schema}.balances SELECT unnest($1::text[]), 0", accounts)
    for start in range(0, len(payments), 1000):
        pipe = client.pipeline(transaction=False)
        for message_id, account, amount in payments[start : start + 1000]:
            pipe.xadd(key, {b"id": message_id, b"key": account, b"amount": amount})
        await pipe.execute()
    await client.xgroup_create(key, _GROUP, id="0", mkstream=True)


async def handle_inbox(
    site: Site, url: str, key: str, payments: Sequence[Payment], concurrency: int
) -> Sample:
    """Handle every payment once; ``result`` is ``(balances, inbox rows, unacknowledged)``
    afterwards. The read schema (beside ``site``) and the stream are removed after."""
    import asyncpg

    from obelisk.messaging.redis import redis_client

    read = site.beside("inbox")
    schema = f'"{read.location}"'
    await read.discard()
    client = redis_client(url)
    conns: list[Any] = []
    try:
        for _ in range(concurrency):
            conns.append(
                await asyncpg.connect(
                    site.dsn, timeout=30, server_settings={"synchronous_commit": "off"}
                )
            )
        await _setup(conns, client, schema, key, payments)
        insert = (
            f"INSERT INTO {schema}.inbox (consumer, message_id, handled_at) "
            "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        )
        update = f"UPDATE {schema}.balances SET balance = balance + $1 WHERE account_id = $2"
        worker = _Worker(client, key, conns, insert, update, len(payments))
        with stopwatch() as watch:
            await worker.run()
        await worker.flush_acks()
        balances = dict(await conns[0].fetch(f"SELECT account_id, balance FROM {schema}.balances"))
        inbox = await conns[0].fetchval(f"SELECT count(*) FROM {schema}.inbox")
        pending = (await client.xpending(key, _GROUP))["pending"]
        await client.delete(key)
    finally:
        for conn in conns:
            await conn.close()
        await client.aclose()
        await read.discard()
    return Sample(watch.seconds, worker.handled, (balances, inbox, pending))


class _Worker:
    """The reader task and the handler tasks of :func:`handle_inbox`."""

    def __init__(
        self, client: Any, key: str, conns: list[Any], insert: str, update: str, total: int
    ) -> None:
        self.client = client
        self.key = key
        self.conns = conns
        self.insert = insert
        self.update = update
        self.total = total
        self.limit = 4 * len(conns)
        self.queues: list[asyncio.Queue[tuple[bytes, dict[bytes, bytes]]]] = [
            asyncio.Queue() for _ in conns
        ]
        self.waiting = 0
        self.room = asyncio.Event()
        self.acks: list[bytes] = []
        self.handled = 0
        self.done = asyncio.Event()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._handle(conn, queue))
            for conn, queue in zip(self.conns, self.queues, strict=True)
        ]
        reader = asyncio.create_task(self._read())
        try:
            await self.done.wait()
        finally:
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _read(self) -> None:
        client, key, queues = self.client, self.key, self.queues
        fetched = 0
        while fetched < self.total:
            if self.waiting >= self.limit:
                self.room.clear()
                await self.flush_acks()
                await self.room.wait()
                continue
            await self.flush_acks()
            reply = await client.xreadgroup(
                _GROUP, "raw", {key: ">"}, count=self.limit - self.waiting, block=500
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self.waiting += 1
                    fetched += 1
                    queues[zlib.crc32(fields[b"key"]) % len(queues)].put_nowait((entry_id, fields))

    async def _handle(
        self, conn: Any, queue: asyncio.Queue[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        insert, update = self.insert, self.update
        while True:
            entry_id, fields = await queue.get()
            async with conn.transaction():
                status = await conn.execute(insert, _GROUP, fields[b"id"].decode(), time.time())
                if status == "INSERT 0 1":  # not handled before
                    await conn.execute(update, int(fields[b"amount"]), fields[b"key"].decode())
            self.acks.append(entry_id)
            self.waiting -= 1
            self.room.set()
            self.handled += 1
            if self.handled == self.total:
                self.done.set()

    async def flush_acks(self) -> None:
        acks, self.acks = self.acks, []
        if acks:
            await self.client.xack(self.key, _GROUP, *acks)
