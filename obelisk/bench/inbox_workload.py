"""The ``worker-inbox`` workload (PostgreSQL): a worker's throughput with the inbox.

20,000 payment messages (1,000 accounts x 20, keyed by account) wait on a Redis stream,
published untimed on a throwaway server. A ``MessageWorker`` (16 handlers, a read-store
pool of 16 connections) handles them with ``Inbox(PostgresReadStore)``: one transaction
per message records its id in the inbox and runs the handler's effect, an ``UPDATE`` of
the account's balance row, in the read schema beside the events. The figure is messages
per second from the worker's start until every message is handled.

The raw side is bare redis-py and bare asyncpg doing the same transactions at the same
concurrency (:mod:`obelisk.bench.raw_inbox`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, ClassVar, cast

import msgspec

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.brokers import broker_server, run_tag, server_missing
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.raw_inbox import Payment, handle_inbox
from obelisk.bench.sites import Site
from obelisk.bench.workload import Target, Workload, amount, scaled

if TYPE_CHECKING:
    from obelisk.messaging.broker import Broker
    from obelisk.messaging.worker import MessageContext, MessageWorker
    from obelisk.projections import ReadStore

__all__ = ["WorkerInbox"]

_GROUP = "payments"
_encode_amount = msgspec.json.Encoder().encode
_decode_amount = msgspec.json.Decoder(int).decode


async def _open_connections(read_store: ReadStore, count: int) -> None:
    """Have the read store's pool open ``count`` connections (a running worker has them;
    the raw side opens its connections before its clock too)."""
    barrier = asyncio.Barrier(count)

    async def hold() -> None:
        async with read_store.transaction() as tx:
            await tx.execute("SELECT 1")
            await barrier.wait()  # every transaction open at once: ``count`` connections

    await asyncio.gather(*(hold() for _ in range(count)))


class WorkerInbox(Workload):
    """worker-inbox: MessageWorker + PostgreSQL inbox, 20,000 messages, messages/s."""

    id = "worker-inbox"
    name = "worker-inbox"
    title = (
        "MessageWorker (16 handlers, read-store pool of 16) with Inbox(PostgresReadStore) "
        "on 20,000 messages waiting on Redis (1,000 keys x 20): per message one "
        "transaction, inbox INSERT + balance UPDATE; throwaway redis-server"
    )
    baseline = (
        "bare redis-py XREADGROUP/XACK + 16 bare asyncpg connections (entries shared by "
        "key hash), one transaction per message: INSERT ... ON CONFLICT DO NOTHING + UPDATE"
    )
    unit = "messages/s"
    target_ratio = None
    target_value = 10_000.0
    backends = frozenset({"postgresql"})
    concurrency: ClassVar[int] = 16
    per_account: ClassVar[int] = 20

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.messages = scaled(20_000, scale, 200)
        accounts = max(1, self.messages // self.per_account)
        ids = [f"acct-{i:05d}" for i in range(accounts)]
        # Keys interleaved, as payments arrive: consecutive messages go to different keys.
        self.payments: list[Payment] = [
            (uuid.UUID(int=i + 1).hex, ids[i % accounts], amount(i)) for i in range(self.messages)
        ]
        self.expected: dict[str, int] = dict.fromkeys(ids, 0)
        for _, account, value in self.payments:
            self.expected[account] += value

    @property
    def n(self) -> int:
        return self.messages

    def target(self, backend: str) -> Target:
        return Target(None, self.target_value)

    def skip_reason(self, backend: str) -> str | None:
        return super().skip_reason(backend) or server_missing("redis")

    def _read_store(self, site: Site) -> ReadStore:
        from obelisk.projections._pg_read import PostgresReadStore

        assert site.dsn is not None
        # One connection per handler: a smaller pool would cap the worker's concurrency.
        return PostgresReadStore(site.dsn, schema=site.location, pool_max_size=self.concurrency)

    async def run_obelisk(self, app: Application) -> Sample:
        from obelisk.messaging.redis import RedisBroker

        site = Site.of_store(app.store).beside("inbox")
        topic = run_tag()  # the run's own: a shared server holds others
        await site.discard()
        try:
            async with (
                broker_server("redis") as (url, shared),
                RedisBroker(url) as broker,
                self._read_store(site) as read_store,
            ):
                try:
                    sample = await self._consume(broker, read_store, topic)
                finally:
                    if shared:
                        await broker.delete_topic(topic)
        finally:
            await site.discard()
        return sample

    async def _consume(self, broker: Broker, read_store: ReadStore, topic: str) -> Sample:
        from obelisk.messaging.inbox import Inbox
        from obelisk.messaging.message import Message
        from obelisk.messaging.worker import MessageWorker

        balances = read_store.qualified("balances")
        # Untimed, as a deployed worker has them: the tables, the rows, the messages.
        async with read_store.transaction() as tx:
            await tx.execute(
                f"CREATE TABLE {balances} (account_id text PRIMARY KEY, balance bigint NOT NULL)"
            )
            await tx.execute(
                f"INSERT INTO {balances} SELECT unnest($1::text[]), 0", list(self.expected)
            )
        inbox = Inbox(read_store)
        await inbox.ensure()
        messages = [
            Message(mid, topic, "payment.received", key, _encode_amount(value))
            for mid, key, value in self.payments
        ]
        for start in range(0, len(messages), 1000):
            await broker.publish(messages[start : start + 1000])
        await broker.create_group(topic, _GROUP)
        await _open_connections(read_store, self.concurrency)
        update = f"UPDATE {balances} SET balance = balance + $1 WHERE account_id = $2"

        async def handler(ctx: MessageContext) -> None:
            assert ctx.tx is not None
            message = ctx.message
            changed = await ctx.tx.execute(update, _decode_amount(message.payload), message.key)
            if changed != 1:
                raise LookupError(f"no balance row for {message.key!r}")

        worker = MessageWorker(
            broker, handler, group=_GROUP, topic=topic, inbox=inbox, concurrency=self.concurrency
        )
        running: asyncio.Task[None] | None = None
        try:
            with stopwatch() as watch:
                running = asyncio.create_task(worker.run())
                await self._until_handled(worker, running)
        finally:
            # After the clock: stopping waits for the worker's blocking fetch to return.
            worker.stop()
            if running is not None:
                await running
        await self._verify(broker, read_store, topic, worker)
        sample = Sample(watch.seconds, worker.handled)
        # The mean time of one message's inbox transaction (handler included).
        sample.extra["transaction_mean_ms"] = worker.handler_seconds.sum / worker.handled * 1000
        return sample

    async def _until_handled(self, worker: MessageWorker, running: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 120
        while worker.handled < self.messages:
            if running.done():
                running.result()
                self._check(False, "obelisk", "the worker stopped early")
            self._check(time.monotonic() < deadline, "obelisk", f"{worker.handled} handled")
            await asyncio.sleep(0.002)

    async def _verify(
        self, broker: Broker, read_store: ReadStore, topic: str, worker: MessageWorker
    ) -> None:
        side = "obelisk"
        self._check(worker.handled == self.messages, side, f"{worker.handled} handled")
        self._check(worker.dead_lettered == 0, side, f"{worker.dead_lettered} dead-lettered")
        rows = await read_store.query(
            f"SELECT account_id, balance FROM {read_store.qualified('balances')}"
        )
        self._check(dict(rows) == self.expected, side, "balances differ from the messages")
        ((recorded,),) = await read_store.query(
            f"SELECT count(*) FROM {read_store.qualified('obelisk_inbox')}"
        )
        self._check(recorded == self.messages, side, f"{recorded} inbox records")
        pending = await broker.pending(topic, _GROUP)
        self._check(pending == 0, side, f"{pending} messages not acknowledged")

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        site = Site.of_raw(raw, location)
        async with broker_server("redis") as (url, _shared):
            sample = await handle_inbox(site, url, run_tag(), self.payments, self.concurrency)
        balances, recorded, pending = cast(tuple[dict[str, int], int, int], sample.result)
        self._check(sample.work == self.messages, "raw", f"{sample.work} handled")
        self._check(balances == self.expected, "raw", "balances differ from the messages")
        self._check(recorded == self.messages, "raw", f"{recorded} inbox records")
        self._check(pending == 0, "raw", f"{pending} messages not acknowledged")
        return sample
