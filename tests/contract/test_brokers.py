"""The Broker contract, run against MemoryBroker, and RedisBroker and NatsBroker on real
servers (the session's throwaway ones, or $OBELISK_TEST_REDIS_URL / $OBELISK_TEST_NATS_URL)."""

from __future__ import annotations

import pytest

from obelisk.messaging import Broker, MemoryBroker
from obelisk.messaging._nats_names import topic_subjects
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker
from obelisk.testing import BrokerContract


class TestMemoryBroker(BrokerContract):
    @pytest.fixture(autouse=True)
    def _backend(self) -> None:
        # The memory broker is its own backend: a "second broker" is the same object.
        self.backend = MemoryBroker()

    async def create_broker(self) -> Broker:
        await self.backend.open()
        return self.backend


class TestRedisBroker(BrokerContract):
    url: str

    @pytest.fixture(autouse=True)
    def _backend(self, redis_url: str) -> None:
        self.url = redis_url

    async def create_broker(self) -> Broker:
        broker = RedisBroker(self.url)
        await broker.open()
        return broker

    async def inject_raw(self, broker: Broker, topic: str) -> None:
        assert isinstance(broker, RedisBroker)
        await broker.client.xadd(broker.prefix + topic, {b"note": b"written by another program"})


class TestNatsBroker(BrokerContract):
    url: str

    @pytest.fixture(autouse=True)
    def _backend(self, nats_url: str) -> None:
        self.url = nats_url

    async def create_broker(self) -> Broker:
        broker = NatsBroker(self.url)
        await broker.open()
        return broker

    async def inject_raw(self, broker: Broker, topic: str) -> None:
        assert isinstance(broker, NatsBroker)
        subject = topic_subjects(broker.prefix, topic).replace(">", "raw")
        await broker.js.publish(subject, b"\xc1 not msgpack")
