"""Broker contract: publishing, sequenced publishing, reading, names and deleting topics."""

from __future__ import annotations

import pytest

from obelisk.errors import BrokerError, ValidationError
from obelisk.messaging.broker import Published
from obelisk.messaging.message import Message
from obelisk.testing._broker_contract_base import BrokerContractBase, asyncio_test

__all__ = ["PublishContract"]

BAD_TOPICS = ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a/b", "é", "x" * 201]


class PublishContract(BrokerContractBase):
    @asyncio_test
    async def test_batches_are_appended_in_order(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            assert await broker.publish(self.messages(topic, range(5))) == Published(5, 0)
            assert await broker.publish(self.messages(topic, range(5, 8))) == Published(3, 0)
            assert self.numbers(await self.everything(broker, topic)) == list(range(8))
            assert await broker.length(topic) == 8

    @asyncio_test
    async def test_every_field_of_a_message_survives_the_trip(self) -> None:
        topic = self.topic()
        sent = Message(
            id="id-ü-1",
            topic=topic,
            subject="Account.MoneyDeposited",
            key="acct 1/ü",
            payload=bytes(range(256)),
            headers={"obelisk-type": "Deposited", "traceparent": "00-ab-cd-01", "empty": ""},
        )
        odd = Message("id-2", topic, "not a nats.subject *", "k", b"", {})
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish([sent, odd])
            assert [item.message for item in await broker.read(topic)] == [sent, odd]
            got = await self.consume_until(broker, topic, "g", 2)
            assert [d.message for d in got] == [sent, odd]
            assert [d.attempt for d in got] == [1, 1]

    @asyncio_test
    async def test_a_batch_over_several_topics_lands_on_each_in_order(self) -> None:
        one, two = self.topic("one"), self.topic("two")
        batch = [self.message(one if n % 2 else two, n) for n in range(10)]
        async with self.open_broker() as broker:
            assert await broker.publish(batch) == Published(10, 0)
            assert self.numbers(await self.everything(broker, one)) == [1, 3, 5, 7, 9]
            assert self.numbers(await self.everything(broker, two)) == [0, 2, 4, 6, 8]

    @asyncio_test
    async def test_publishing_nothing_publishes_nothing(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            assert await broker.publish([]) == Published(0, 0)
            assert await broker.publish([], sequences=[]) == Published(0, 0)
            assert await broker.length(topic) == 0
            assert await broker.read(topic) == []

    @asyncio_test
    async def test_sequences_must_match_the_messages_one_to_one(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            with pytest.raises(BrokerError):
                await broker.publish(self.messages(topic, range(3)), sequences=[1, 2])
            assert await broker.length(topic) == 0

    # -- sequenced publishing ---------------------------------------------------------------

    @asyncio_test
    async def test_sequences_not_above_the_last_published_are_dropped(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            first = await broker.publish(self.messages(topic, range(1, 6)), sequences=range(1, 6))
            assert first == Published(5, 0)
            again = await broker.publish(self.messages(topic, range(3, 9)), sequences=range(3, 9))
            assert again == Published(3, 3)
            old = await broker.publish(self.messages(topic, [2]), sequences=[2])
            assert old == Published(0, 1)
            assert self.numbers(await self.everything(broker, topic)) == list(range(1, 9))

    @asyncio_test
    async def test_within_a_batch_a_sequence_below_an_earlier_one_is_dropped(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            published = await broker.publish(
                self.messages(topic, [5, 3, 6, 6]), sequences=[5, 3, 6, 6]
            )
            assert published == Published(2, 2)
            assert self.numbers(await self.everything(broker, topic)) == [5, 6]

    @asyncio_test
    async def test_a_restarted_publisher_publishes_nothing_twice(self) -> None:
        # The relay crashed after publishing and before saving its checkpoint: a new
        # process (a new broker object) publishes the same batch again, and more.
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.publish(self.messages(topic, range(1, 6)), sequences=range(1, 6))
        async with self.open_broker() as restarted:
            again = await restarted.publish(
                self.messages(topic, range(4, 8)), sequences=range(4, 8)
            )
            assert again == Published(2, 2)
            assert self.numbers(await self.everything(restarted, topic)) == list(range(1, 8))

    @asyncio_test
    async def test_unsequenced_messages_leave_the_last_sequence_alone(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.publish(self.messages(topic, [1, 2, 3]), sequences=[1, 2, 3])
            await broker.publish(self.messages(topic, [100, 101]))
            assert await broker.publish(
                self.messages(topic, [3, 4]), sequences=[3, 4]
            ) == Published(1, 1)
            await broker.publish(self.messages(topic, [102]))
        async with self.open_broker() as restarted:
            assert await restarted.publish(
                self.messages(topic, [4, 5]), sequences=[4, 5]
            ) == Published(1, 1)
            numbers = self.numbers(await self.everything(restarted, topic))
            assert numbers == [1, 2, 3, 100, 101, 4, 102, 5]

    @asyncio_test
    async def test_sequences_are_kept_per_topic(self) -> None:
        one, two = self.topic("one"), self.topic("two")
        async with self.open_broker() as broker:
            await broker.publish(self.messages(one, [10]), sequences=[10])
            batch = [self.message(two, 1), self.message(one, 11), self.message(one, 9)]
            assert await broker.publish(batch, sequences=[1, 11, 9]) == Published(2, 1)
            assert self.numbers(await self.everything(broker, one)) == [10, 11]
            assert self.numbers(await self.everything(broker, two)) == [1]

    # -- reading, names, deleting -----------------------------------------------------------

    @asyncio_test
    async def test_read_pages_through_a_topic_with_cursors(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            assert await broker.read(topic) == []
            await broker.publish(self.messages(topic, range(7)))
            page = await broker.read(topic, limit=4)
            assert self.numbers([item.message for item in page]) == [0, 1, 2, 3]
            assert len({item.cursor for item in page}) == 4
            rest = await broker.read(topic, after=page[1].cursor, limit=100)
            assert self.numbers([item.message for item in rest]) == [2, 3, 4, 5, 6]
            assert [item.cursor for item in rest[:2]] == [item.cursor for item in page[2:]]
            assert await broker.read(topic, after=rest[-1].cursor) == []
            # Reading consumes nothing.
            assert await broker.length(topic) == 7
            assert len(await broker.read(topic)) == 7

    @asyncio_test
    async def test_bad_topic_names_are_rejected(self) -> None:
        good = self.topic()
        async with self.open_broker() as broker:
            for bad in BAD_TOPICS:
                with pytest.raises(ValidationError):
                    await broker.publish([self.message(bad, 1)])
                with pytest.raises(ValidationError):
                    await broker.publish([self.message(bad, 1)], sequences=[1])
                with pytest.raises(ValidationError):
                    await broker.create_group(bad, "g")
                with pytest.raises(ValidationError):
                    await broker.length(bad)
                with pytest.raises(ValidationError):
                    await broker.pending(bad, "g")
            # A batch with one bad topic publishes nothing, not even its good messages.
            with pytest.raises(ValidationError):
                await broker.publish([self.message(good, 1), self.message("a..b", 2)])
            assert await broker.length(good) == 0

    @asyncio_test
    async def test_deleting_a_topic_removes_its_messages_groups_and_sequence(self) -> None:
        topic = self.topic()
        async with self.open_broker() as broker:
            await broker.create_group(topic, "g")
            await broker.publish(self.messages(topic, [1, 2]), sequences=[1, 2])
            await broker.delete_topic(topic)
            assert await broker.length(topic) == 0
            with pytest.raises(BrokerError):
                await broker.consume(topic, "g", "c-1", wait=0.1)
            assert await broker.publish(self.messages(topic, [1]), sequences=[1]) == Published(1, 0)
            await broker.delete_topic(self.topic("never-used"))  # no error
