"""The ``e2e-latency`` workload: from a command's commit to the start of a message handler.

An Application takes Deposit commands at a steady 1,000 per second (10,000 at full size,
each sent at its planned time whether or not earlier ones have returned, as independent
clients would), over 1,000 accounts opened untimed. In the same process an
``OutboxRelay.run()`` task publishes the log to Redis Streams and a ``MessageWorker``
consumes it (16 handlers, no inbox: the handler only notes the time). For every deposit,
the latency is the wall-clock time at which its handler started (``time.time()``) minus
the event's ``recorded_at``, looked up by the ``obelisk-position`` header once the run is
over; the figure is the p99 in milliseconds. Relay and worker first catch up on the seeded
events, untimed, so the measured stretch is the steady state.

The yardstick is the broker's own round trip at the same rate: bare redis-py ``XADD`` of
an entry carrying its send time, read back by ``XREADGROUP`` (blocking, 64 at a time) and
acknowledged with ``XACK``. What obelisk's p99 has beyond it is the commit, the relay's
wake-up, read and publish, and the worker's dispatch. ``ratio_to_raw`` is that floor over
obelisk's p99 (small by nature; the target is the absolute p99).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.brokers import broker_server, run_tag, server_missing
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.sites import Site
from obelisk.bench.workload import Target, Workload, amount, fold_balances, open_accounts, scaled
from obelisk.demo.bank import Deposit
from obelisk.messaging.message import POSITION
from obelisk.store.base import EventStore

if TYPE_CHECKING:
    from obelisk.messaging.broker import Broker
    from obelisk.messaging.worker import MessageContext
    from obelisk.projections import ReadStore

__all__ = ["EndToEndLatency"]

_MS = 1000.0
_PAYLOAD = b"x" * 200  # the raw entries' body: about an obelisk message's size


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def paced(count: int, rate: float, send: Callable[[int], Awaitable[object]]) -> float:
    """Call ``send(i)`` for i in ``range(count)``, the i-th at ``i / rate`` seconds from
    the start, each in its own task (a slow one never delays the next); the seconds until
    the last returned."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.TaskGroup() as group:
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(send(i))  # type: ignore[arg-type]
    return loop.time() - start


def _summary(latencies: list[float], count: int, seconds: float) -> Sample:
    sample = Sample(seconds, count)
    extra = sample.extra
    extra["p99_ms"] = _p99(latencies) * _MS
    extra["p50_ms"] = statistics.median(latencies) * _MS
    extra["max_ms"] = max(latencies) * _MS
    extra["rate_per_s"] = count / seconds
    return sample


class EndToEndLatency(Workload):
    """e2e-latency: p99 commit -> handler start through relay, Redis and a worker."""

    id = "e2e-latency"
    name = "e2e-latency"
    title = (
        "p99 of (handler start - event recorded_at): Deposit commands at 1,000/s for 10 s "
        "over 1,000 accounts, OutboxRelay.run() to Redis Streams and a MessageWorker (16 "
        "handlers, no inbox) in the same process; throwaway redis-server"
    )
    baseline = (
        "the broker's floor: bare redis-py XADD at the same rate, read back with "
        "XREADGROUP BLOCK (64 at a time) + XACK; p99 of (receipt - send time)"
    )
    unit = "ms"
    higher_is_better = False
    target_ratio = None
    target_value = 50.0
    rate: ClassVar[float] = 1000.0
    concurrency: ClassVar[int] = 16

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.commands = scaled(10_000, scale, 200)
        self.accounts = min(1000, self.commands)
        self.account_ids = [f"e2e-{i:05d}" for i in range(self.accounts)]

    @property
    def n(self) -> int:
        return self.commands

    def target(self, backend: str) -> Target:
        return Target(None, self.target_value)

    def skip_reason(self, backend: str) -> str | None:
        return super().skip_reason(backend) or server_missing("redis")

    def value(self, sample: Sample) -> float:
        return sample.extra["p99_ms"]

    async def seed(self, store: EventStore) -> None:
        await open_accounts(store, self.account_ids)

    def _deposit(self, i: int) -> Deposit:
        return Deposit(account_id=self.account_ids[i % self.accounts], amount=amount(i))

    async def run_obelisk(self, app: Application) -> Sample:
        from obelisk.messaging.redis import RedisBroker

        store = app.store
        site = Site.of_store(store).beside("relay")
        topic = run_tag()  # the run's own: a shared server holds others
        arrivals: list[tuple[str, float]] = []
        try:
            async with (
                broker_server("redis") as (url, shared),
                RedisBroker(url) as broker,
                site.read_store() as read_store,
            ):
                try:
                    seconds, head = await self._follow(app, broker, read_store, topic, arrivals)
                finally:
                    if shared:
                        await broker.delete_topic(topic)
        finally:
            await site.discard()
        latencies = await self._latencies(store, head, arrivals)
        balances, _ = await fold_balances(store, 1000)
        expected = dict.fromkeys(self.account_ids, 0)
        for i in range(self.commands):
            expected[self.account_ids[i % self.accounts]] += amount(i)
        self._check(balances == expected, "obelisk", "balances differ from the commands")
        return _summary(latencies, self.commands, seconds)

    async def _follow(
        self,
        app: Application,
        broker: Broker,
        read_store: ReadStore,
        topic: str,
        arrivals: list[tuple[str, float]],
    ) -> tuple[float, int]:
        """Relay and worker running while the commands go in; the commands' seconds and
        the log's head before them."""
        from obelisk.messaging.relay import OutboxRelay
        from obelisk.messaging.worker import MessageWorker

        store = app.store
        relay = OutboxRelay(store, read_store, broker, topic=topic)

        async def handler(ctx: MessageContext) -> None:
            # The handler's first act: the clock is read before anything else it could do.
            arrivals.append((ctx.message.headers[POSITION], time.time()))

        worker = MessageWorker(
            broker, handler, group="e2e", topic=topic, concurrency=self.concurrency
        )
        tasks = [asyncio.create_task(relay.run()), asyncio.create_task(worker.run())]
        try:
            # Untimed warm-up: both catch up on the seeded AccountOpened events.
            await self._until(lambda: len(arrivals) >= self.accounts, tasks)
            head = await store.last_position()
            arrivals.clear()
            handle = app.handle
            with stopwatch():  # for its garbage collection first, as on the raw side
                seconds = await paced(self.commands, self.rate, lambda i: handle(self._deposit(i)))
            await self._until(lambda: len(arrivals) >= self.commands, tasks)
        finally:
            relay.stop()
            worker.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            task.result()  # a relay or worker that failed while stopping
        return seconds, head

    async def _until(self, done: Callable[[], bool], tasks: list[asyncio.Task[None]]) -> None:
        """Wait (60 s at most) for ``done``; a relay or worker that died is an error here."""
        deadline = time.monotonic() + 60
        while not done():
            for task in tasks:
                if task.done():
                    task.result()  # raises what stopped it
                    self._check(False, "obelisk", "the relay or the worker stopped early")
            self._check(time.monotonic() < deadline, "obelisk", "the messages fell behind")
            await asyncio.sleep(0.005)

    async def _latencies(
        self, store: EventStore, head: int, arrivals: list[tuple[str, float]]
    ) -> list[float]:
        recorded: dict[str, float] = {}
        after = head
        while True:
            page = await store.read_all(after=after, limit=1000)
            recorded.update((str(e.position), e.recorded_at) for e in page)
            if len(page) < 1000:
                break
            after = page[-1].position
        self._check(len(recorded) == self.commands, "obelisk", f"{len(recorded)} deposits")
        positions = [position for position, _ in arrivals]
        self._check(
            len(arrivals) == self.commands and set(positions) == recorded.keys(),
            "obelisk", "the handled messages are not the deposits, once each",
        )  # fmt: skip
        return [at - recorded[position] for position, at in arrivals]

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        async with broker_server("redis") as (url, _shared):
            latencies, seconds = await _redis_round_trips(url, run_tag(), self.commands, self.rate)
        self._check(len(latencies) == self.commands, "raw", f"{len(latencies)} received")
        return _summary(latencies, self.commands, seconds)


async def _redis_round_trips(
    url: str, key: str, count: int, rate: float
) -> tuple[list[float], float]:
    """``count`` entries XADDed at ``rate`` and consumed in a group; each one's latency
    (receipt - send time) and the seconds from the first send to the last one's return."""
    from obelisk.messaging.redis import redis_client

    client: Any = redis_client(url)
    latencies: list[float] = []
    try:
        await client.xgroup_create(key, "e2e", id="0", mkstream=True)

        async def consume() -> None:
            while len(latencies) < count:
                reply = await client.xreadgroup("e2e", "raw", {key: ">"}, count=64, block=500)
                now = time.time()
                ids = []
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        latencies.append(now - float(fields[b"t"]))
                        ids.append(entry_id)
                if ids:
                    await client.xack(key, "e2e", *ids)

        async def send(_i: int) -> None:
            await client.xadd(key, {b"t": repr(time.time()), b"m": _PAYLOAD})

        consumer = asyncio.create_task(consume())
        try:
            with stopwatch():
                seconds = await paced(count, rate, send)
                await asyncio.wait_for(asyncio.shield(consumer), 60)
        finally:
            consumer.cancel()
        await client.delete(key)
    finally:
        await client.aclose()
    return latencies, seconds
