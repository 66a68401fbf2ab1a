"""Broker contract: consumer groups, acknowledgement, redelivery, counts, malformed entries."""

from __future__ import annotations

import asyncio
import time

import pytest

from obelisk.errors import BrokerError
from obelisk.messaging.message import MALFORMED, Delivery
from obelisk.testing._broker_contract_base import BrokerContractBase, asyncio_test

__all__ = ["GroupContract"]


class GroupContract(BrokerContractBase):
    @asyncio_test
    async def test_every_group_sees_every_message_from_the_start(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.publish(self.messages(topic, range(3)))
            await broker.create_group(topic, "billing")
            await broker.create_group(topic, "shipping")
            await broker.publish(self.messages(topic, range(3, 6)))
            for group in ("billing", "shipping"):
                got = await self.consume_until(broker, topic, group, 6)
                assert self.numbers(got) == list(range(6))
                assert [d.attempt for d in got] == [1] * 6
                await broker.ack(topic, group, got)

    @asyncio_test
    async def test_a_group_created_from_now_skips_earlier_messages(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.publish(self.messages(topic, range(3)))
            await broker.create_group(topic, "late", from_now=True)
            await broker.publish(self.messages(topic, [3, 4]))
            got = await self.consume_until(broker, topic, "late", 2)
            assert self.numbers(got) == [3, 4]
            assert await broker.pending(topic, "late") == 2

    @asyncio_test
    async def test_creating_a_group_again_changes_nothing(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, range(4)))
            first = await broker.consume(topic, "g", "c-1", max_messages=2, wait=1.0)
            assert self.numbers(first) == [0, 1]
            await broker.ack(topic, "g", first)
            await broker.create_group(topic, "g")
            await broker.create_group(topic, "g", from_now=True)
            assert self.numbers(await self.consume_until(broker, topic, "g", 2)) == [2, 3]

    @asyncio_test
    async def test_consume_returns_at_most_max_messages(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, range(5)))
            got: list[Delivery] = []
            deadline = time.monotonic() + self.wait_limit
            while len(got) < 5:
                assert time.monotonic() < deadline, f"only {got} after {self.wait_limit}s"
                batch = await broker.consume(topic, "g", "c-1", max_messages=2, wait=0.2)
                assert len(batch) <= 2
                got += batch
            assert self.numbers(got) == list(range(5))

    @asyncio_test
    async def test_consuming_an_idle_group_returns_nothing_after_waiting(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            assert await broker.consume(topic, "g", "c-1", wait=0.1) == []

    @asyncio_test
    async def test_a_waiting_consumer_gets_a_message_published_meanwhile(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            # It waits while there is nothing, not until max_messages came: one message
            # ends a wait of a minute (the bound fails a broker that waits it out).
            waiting = asyncio.create_task(broker.consume(topic, "g", "c-1", wait=60.0))
            await asyncio.sleep(0.05)  # let it start waiting (the test passes either way)
            await broker.publish(self.messages(topic, [1]))
            async with asyncio.timeout(self.wait_limit):
                got = await waiting
            got += await self.consume_until(broker, topic, "g", 1 - len(got))
            assert self.numbers(got) == [1]

    @asyncio_test
    async def test_consuming_a_group_that_does_not_exist_fails(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.publish(self.messages(topic, [1]))
            with pytest.raises(BrokerError):
                await broker.consume(topic, "nobody", "c-1", wait=0.1)

    @asyncio_test
    async def test_consumers_of_one_group_share_its_messages_without_duplicates(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, range(20)))
            one = await broker.consume(topic, "g", "c-1", max_messages=5, wait=1.0)
            two = await broker.consume(topic, "g", "c-2", max_messages=5, wait=1.0)
            assert one and two
            assert not set(self.numbers(one)) & set(self.numbers(two))
            # Then both at once, until the group has had everything.
            seen = self.numbers(one) + self.numbers(two)
            await broker.ack(topic, "g", [*one, *two])
            deadline = time.monotonic() + self.wait_limit
            while len(seen) < 20:
                assert time.monotonic() < deadline, f"only {sorted(seen)} delivered"
                batches = await asyncio.gather(
                    *(
                        broker.consume(topic, "g", name, max_messages=3, wait=0.2)
                        for name in ("c-1", "c-2", "c-3")
                    )
                )
                for batch in batches:
                    seen += self.numbers(batch)
                    await broker.ack(topic, "g", batch)
            assert sorted(seen) == list(range(20))
            assert await broker.pending(topic, "g") == 0

    @asyncio_test
    async def test_an_unacknowledged_message_is_delivered_again_with_its_attempt(self) -> None:
        topic = self.topic()
        timeout = self.ack_timeout
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, [1]))
            first = await self.consume_until(broker, topic, "g", 1, ack_timeout=timeout)
            assert [d.attempt for d in first] == [1]
            # The consumer died without acknowledging: another consumer gets it again.
            again = await self.consume_until(
                broker, topic, "g", 1, consumer="c-2", ack_timeout=timeout
            )
            assert self.numbers(again) == [1]
            assert [d.attempt for d in again] == [2]
            assert again[0].message == first[0].message
            third = await self.consume_until(broker, topic, "g", 1, ack_timeout=timeout)
            assert [d.attempt for d in third] == [3]
            await broker.ack(topic, "g", third)
            assert await broker.pending(topic, "g") == 0

    @asyncio_test
    async def test_an_acknowledged_message_is_not_delivered_again(self) -> None:
        topic = self.topic()
        timeout = self.ack_timeout
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, [1, 2]))
            got = await self.consume_until(broker, topic, "g", 2, ack_timeout=timeout)
            await broker.ack(topic, "g", got[:1])
            assert await broker.pending(topic, "g") == 1
            # Both were delivered together: once 2 comes again its ack timeout has passed,
            # and so has 1's, which must not come with it or before it.
            again = await self.consume_until(broker, topic, "g", 1, ack_timeout=timeout)
            assert self.numbers(again) == [2]
            assert [d.attempt for d in again] == [2]

    @asyncio_test
    async def test_length_and_pending_count_what_is_stored_and_not_acknowledged(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            assert await broker.length(topic) == 0
            assert await broker.pending(topic, "g") == 0
            await broker.publish(self.messages(topic, range(4)))
            await broker.create_group(topic, "g")
            assert await broker.length(topic) == 4
            assert await broker.pending(topic, "g") == 4
            assert await broker.pending(topic, "not-created") == 4
            got = await broker.consume(topic, "g", "c-1", max_messages=3, wait=1.0)
            assert len(got) == 3
            assert await broker.pending(topic, "g") == 4  # delivered is not acknowledged
            await broker.ack(topic, "g", got[:2])
            assert await broker.pending(topic, "g") == 2
            await broker.ack(topic, "g", [])
            assert await broker.length(topic) == 4  # acknowledging removes nothing

    @asyncio_test
    async def test_a_malformed_entry_is_delivered_marked_and_the_next_ones_follow(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, [1]))
            await self.inject_raw(broker, topic)
            await broker.publish(self.messages(topic, [2]))
            got = await self.consume_until(broker, topic, "g", 3)
            bad: Delivery = got[1]
            assert bad.message.headers.get(MALFORMED), bad
            assert bad.message.topic == topic
            assert bad.attempt == 1
            assert self.numbers([got[0], got[2]]) == [1, 2]
            assert all(MALFORMED not in d.message.headers for d in (got[0], got[2]))
            await broker.ack(topic, "g", got)
            assert await broker.pending(topic, "g") == 0
            read = await broker.read(topic)
            assert [MALFORMED in item.message.headers for item in read] == [False, True, False]
