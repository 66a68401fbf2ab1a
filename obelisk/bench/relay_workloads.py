"""The relay workloads: the outbox relay's throughput, to Redis Streams and NATS JetStream.

``relay-redis`` and ``relay-nats``: a log of 5,000 accounts x 10 events (50,000 at full
size), seeded untimed on the run's event store backend, published by
``OutboxRelay.run_until_caught_up()`` in pages of 1,000 (each page one sequenced publish,
then the relay's checkpoint commit in a read store beside the events). The broker is a
throwaway server for each run (:mod:`obelisk.bench.brokers`).

The raw side reads the same rows with the bare driver and publishes them with the bare
client, one batch per page (:mod:`obelisk.bench.raw_relay`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.brokers import BrokerKind, broker_server, run_tag, server_missing
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.raw_relay import relay_nats, relay_redis
from obelisk.bench.rebuild_workload import bulk_seed
from obelisk.bench.sites import Site
from obelisk.bench.workload import STREAM_TYPE, Workload, amount, scaled
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.domain.events import Event
from obelisk.messaging.message import POSITION
from obelisk.store.base import EventStore
from obelisk.store.records import NO_STREAM, AppendRequest

if TYPE_CHECKING:
    from obelisk.messaging.broker import Broker

__all__ = ["RelayNats", "RelayRedis", "make_broker"]


def make_broker(kind: BrokerKind, url: str) -> Broker:
    """An unopened obelisk broker of ``kind`` on ``url``."""
    if kind == "redis":
        from obelisk.messaging.redis import RedisBroker

        return RedisBroker(url)
    from obelisk.messaging.nats import NatsBroker

    return NatsBroker(url)


class _Relay(Workload):
    """The relay's events/s to one broker (see the module notes)."""

    kind: ClassVar[BrokerKind]
    unit = "events/s"
    target_ratio = 0.5
    target_value = 50_000.0
    events_per_account: ClassVar[int] = 10
    page: ClassVar[int] = 1000

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.accounts = scaled(5000, scale, 50)

    @property
    def n(self) -> int:
        return self.accounts * self.events_per_account

    def skip_reason(self, backend: str) -> str | None:
        return super().skip_reason(backend) or server_missing(self.kind)

    def _requests(self) -> Iterator[AppendRequest]:
        for i in range(self.accounts):
            events: list[Event] = [AccountOpened(owner=f"owner-{i}")]
            events.extend(
                MoneyDeposited(amount=amount(i + k)) for k in range(1, self.events_per_account)
            )
            yield AppendRequest(f"rl-{i:06d}", events, NO_STREAM, STREAM_TYPE)

    async def seed(self, store: EventStore) -> None:
        await bulk_seed(store, self._requests())

    async def run_obelisk(self, app: Application) -> Sample:
        from obelisk.messaging.relay import OutboxRelay

        store = app.store
        site = Site.of_store(store).beside("relay")
        # A topic of the run's own: a shared server (the environment's) holds others.
        topic = run_tag()
        try:
            async with (
                broker_server(self.kind) as (url, shared),
                make_broker(self.kind, url) as broker,
                site.read_store() as read,
            ):
                relay = OutboxRelay(store, read, broker, topic=topic, page_size=self.page)
                try:
                    with stopwatch() as watch:
                        await relay.run_until_caught_up()
                    length = await broker.length(topic)
                    first = await broker.read(topic, limit=1)
                finally:
                    if shared:
                        await broker.delete_topic(topic)
        finally:
            await site.discard()
        head = await store.last_position()
        self._check(relay.position == head, "obelisk", f"relay at {relay.position}, not {head}")
        self._check(relay.published == self.n, "obelisk", f"{relay.published} published")
        self._check(length == self.n, "obelisk", f"the topic holds {length} messages")
        (oldest,) = await store.read_all(limit=1)
        position = first[0].message.headers.get(POSITION) if first else None
        self._check(position == str(oldest.position), "obelisk", "the first message differs")
        sample = Sample(watch.seconds, self.n)
        sample.extra["publish_share"] = relay.publish_seconds / watch.seconds
        return sample

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        site = Site.of_raw(raw, location)
        async with broker_server(self.kind) as (url, _shared):
            name = run_tag()
            if self.kind == "redis":
                sample = await relay_redis(site, url, name, self.page)
            else:
                sample = await relay_nats(site, url, name, f"{name}.events", self.page)
        self._check(sample.work == self.n, "raw", f"{sample.work} published")
        self._check(sample.result == self.n, "raw", f"the broker holds {sample.result}")
        return sample


class RelayRedis(_Relay):
    """relay-redis: OutboxRelay catching up 50,000 events to Redis Streams."""

    id = "relay-redis"
    name = "relay-redis"
    kind = "redis"
    title = (
        "OutboxRelay.run_until_caught_up of 5,000 accounts x 10 events to Redis Streams, "
        "pages of 1,000 (one Lua-sequenced publish + checkpoint commit per page; "
        "checkpoint in a read store beside the events; throwaway redis-server)"
    )
    baseline = (
        "bare driver SELECT of the same rows in pages of 1,000, each page one redis-py "
        "pipeline: XADD per row (columns + data bytes as one msgpack field) + checkpoint SET"
    )


class RelayNats(_Relay):
    """relay-nats: OutboxRelay catching up 50,000 events to NATS JetStream."""

    id = "relay-nats"
    name = "relay-nats"
    kind = "nats"
    title = (
        "OutboxRelay.run_until_caught_up of 5,000 accounts x 10 events to NATS JetStream, "
        "pages of 1,000 (one publish of the page, acks awaited, + checkpoint commit per "
        "page; checkpoint in a read store beside the events; throwaway nats-server)"
    )
    baseline = (
        "bare driver SELECT of the same rows in pages of 1,000; nats-py JetStream "
        "publish_async per row (columns + data bytes as one msgpack payload, Nats-Msg-Id), "
        "the page's acks awaited before the next"
    )
