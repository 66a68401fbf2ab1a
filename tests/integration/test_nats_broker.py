"""What NatsBroker does beyond the contract: the streams and subjects it makes, streams an
operator tuned, ids NATS cannot chain on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js import api

from obelisk.errors import ValidationError
from obelisk.messaging import Message, Published
from obelisk.messaging._nats_names import stream_name, topic_subjects
from obelisk.messaging.nats import NatsBroker


@pytest.fixture
async def broker(nats_url: str, loop_errors: list[object]) -> AsyncIterator[NatsBroker]:
    async with NatsBroker(nats_url, stream_prefix="NATSTEST") as opened:
        yield opened


def topic() -> str:
    return f"nats.{uuid.uuid4().hex[:12]}"


def message(topic: str, n: int, *, ident: str | None = None, subject: str = "Acct.Done") -> Message:
    return Message(f"m-{n}" if ident is None else ident, topic, subject, "k", b"", {"n": str(n)})


async def test_a_message_lands_on_its_topic_subject_for_nats_consumers(
    broker: NatsBroker,
) -> None:
    name = topic()
    await broker.publish([message(name, 1), message(name, 2, subject="not valid *")])
    stream = stream_name("NATSTEST", name)
    info = await broker.js.stream_info(stream)
    assert info.config.subjects == [topic_subjects("NATSTEST", name)]
    first = await broker.js.get_msg(stream, seq=1)
    second = await broker.js.get_msg(stream, seq=2)
    token = name.replace(".", "_")
    assert (first.subject, second.subject) == (f"NATSTEST.{token}.Acct.Done", f"NATSTEST.{token}._")
    await broker.delete_topic(name)


async def test_a_stream_an_operator_tuned_is_used_as_it_is(broker: NatsBroker) -> None:
    name = topic()
    stream = stream_name("NATSTEST", name)
    await broker.js.add_stream(
        api.StreamConfig(name=stream, subjects=[topic_subjects("NATSTEST", name)], max_msgs=1000)
    )
    assert await broker.publish([message(name, 1)], sequences=[1]) == Published(1, 0)
    assert (await broker.js.stream_info(stream)).config.max_msgs == 1000
    await broker.delete_topic(name)


async def test_blank_ids_still_chain_and_de_duplicate_by_sequence(broker: NatsBroker) -> None:
    name = topic()
    batch = [message(name, n, ident=" ") for n in (1, 2, 3)]
    assert await broker.publish(batch, sequences=[1, 2, 3]) == Published(3, 0)
    assert await broker.publish(batch, sequences=[1, 2, 3]) == Published(0, 3)
    assert [int(item.message.headers["n"]) for item in await broker.read(name)] == [1, 2, 3]
    await broker.delete_topic(name)


async def test_the_group_redelivers_after_the_consumers_ack_timeout(broker: NatsBroker) -> None:
    name = topic()
    await broker.create_group(name, "g")
    await broker.consume(name, "g", "c-1", wait=0.01, ack_timeout=12.5)
    info = await broker.js.consumer_info(stream_name("NATSTEST", name), "g")
    assert info.config.ack_wait == 12.5
    await broker.delete_topic(name)


async def test_group_names_nats_cannot_hold_are_rejected(broker: NatsBroker) -> None:
    with pytest.raises(ValidationError):
        await broker.create_group(topic(), "two words")
