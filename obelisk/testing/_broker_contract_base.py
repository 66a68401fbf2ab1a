"""The base of the broker contract: how a backend provides brokers, and shared helpers."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from obelisk.messaging.broker import Broker
from obelisk.messaging.message import Delivery, Message

__all__ = ["BrokerContractBase", "asyncio_test"]

asyncio_test = pytest.mark.asyncio
"""Marks one contract test as async (on each method, so strict mode runs the suite too)."""


class BrokerContractBase(abc.ABC):
    """What a backend implements to run the broker contract, and the tests' helpers."""

    ack_timeout: ClassVar[float] = 0.5
    """The ack timeout of the redelivery tests: short, since they wait it out."""

    wait_limit: ClassVar[float] = 10.0
    """Bound on every wait for something the broker must eventually do."""

    @abc.abstractmethod
    async def create_broker(self) -> Broker:
        """An opened broker on this test's backend.

        Every call within one test must reach the same backend (the same server; for an
        in-process broker, the same object): a second call plays a restarted publisher or
        another process. Tests use topics of their own, so the backend may be shared
        between tests.
        """

    async def inject_raw(self, broker: Broker, topic: str) -> None:
        """Append to ``topic`` an entry obelisk did not write (another program's).

        Adapters that can do so override this; by default the malformed-entry tests skip.
        ``topic`` already holds messages published through ``broker``.
        """
        pytest.skip(f"{type(broker).__name__} cannot hold entries obelisk did not write")

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_broker(self) -> AsyncIterator[Broker]:
        """A broker from :meth:`create_broker`, closed on exit; fails the test on an
        unhandled event-loop exception."""
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:
            broker = await self.create_broker()
            try:
                yield broker
            finally:
                await broker.close()
        finally:
            loop.set_exception_handler(previous)
        assert not errors, f"unhandled event-loop exceptions: {errors}"

    _topics: list[str]

    @pytest_asyncio.fixture(autouse=True)
    async def _fresh_topics(self) -> AsyncIterator[None]:
        # pytest makes one instance per test: the topics a test made, deleted at its end
        # (not when a broker closes: a second broker must find them).
        self._topics = []
        yield
        if self._topics:
            broker = await self.create_broker()
            try:
                for topic in self._topics:
                    await broker.delete_topic(topic)
            finally:
                await broker.close()

    def topic(self, name: str = "t") -> str:
        """A topic of this test's own (the backend may be shared)."""
        topic = f"contract.{name}.{uuid.uuid4().hex[:12]}"
        self._topics.append(topic)
        return topic

    @staticmethod
    def message(topic: str, n: int, *, key: str = "k-1", subject: str = "Test.Noted") -> Message:
        """A message whose payload and headers say ``n``."""
        return Message(
            id=f"m-{n}-{uuid.uuid4().hex[:8]}",
            topic=topic,
            subject=subject,
            key=key,
            payload=f"payload {n}".encode(),
            headers={"obelisk-type": "Noted", "n": str(n)},
        )

    def messages(self, topic: str, numbers: Sequence[int] | range) -> list[Message]:
        return [self.message(topic, n) for n in numbers]

    @staticmethod
    def numbers(items: Sequence[Delivery] | Sequence[Message]) -> list[int]:
        """What ``n`` each message says, in order."""
        return [
            int((item.message if isinstance(item, Delivery) else item).headers["n"])
            for item in items
        ]

    async def consume_until(
        self,
        broker: Broker,
        topic: str,
        group: str,
        count: int,
        *,
        consumer: str = "c-1",
        ack_timeout: float = 30.0,
        max_messages: int = 100,
    ) -> list[Delivery]:
        """Consume until ``count`` deliveries came, failing after :attr:`wait_limit`."""
        out: list[Delivery] = []
        deadline = time.monotonic() + self.wait_limit
        while len(out) < count:
            assert time.monotonic() < deadline, (
                f"{len(out)} of {count} deliveries after {self.wait_limit}s: {out}"
            )
            out.extend(
                await broker.consume(
                    topic,
                    group,
                    consumer,
                    max_messages=max_messages,
                    wait=0.2,
                    ack_timeout=ack_timeout,
                )
            )
        return out

    async def everything(self, broker: Broker, topic: str) -> list[Message]:
        """Every message of ``topic`` in order, read in pages of 3 to use the cursors."""
        out: list[Message] = []
        after: str | None = None
        while True:
            page = await broker.read(topic, after=after, limit=3)
            if not page:
                return out
            assert len(page) <= 3
            out.extend(item.message for item in page)
            after = page[-1].cursor
