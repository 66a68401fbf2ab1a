"""RedisBroker and NatsBroker under real faults: a restarted server, a cut network, foreign
entries on a topic, an unreachable server, and publishers racing on one topic.

What every case checks: failures surface as BrokerUnavailable (never a driver's own
exception); no message a publish acknowledged is lost; nothing is published twice; and the
same broker object works again once the server is back, without being reopened. Tests
that restart a server need the session's own and skip otherwise.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
import pytest

from obelisk.errors import BrokerUnavailable
from obelisk.messaging import Broker, Delivery, Message
from obelisk.messaging._nats_names import topic_subjects
from obelisk.messaging.message import MALFORMED
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker
from obelisk.servers._host import free_port
from obelisk.servers.nats import ThrowawayNats
from obelisk.servers.redis import ThrowawayRedis

from ._proxy import Proxy

T = TypeVar("T")
WAIT = 15.0  # bound on waiting for a broker to work again

Server = ThrowawayRedis | ThrowawayNats


def make_broker(kind: str, url: str, timeout: float = 2.0) -> Broker:
    # A short timeout: a test waiting on a lost answer fails over in 2 s, not 5.
    return RedisBroker(url) if kind == "redis" else NatsBroker(url, timeout=timeout)


@pytest.fixture(params=["redis", "nats"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{kind}_url"))


@pytest.fixture
def server(kind: str, request: pytest.FixtureRequest) -> Server:
    found: Server | None = request.getfixturevalue(f"{kind}_server")
    if found is None:
        pytest.skip(f"restarts {kind}: needs the session's own server, not one from the env")
    return found


@pytest.fixture
async def broker(kind: str, url: str, loop_errors: list[object]) -> AsyncIterator[Broker]:
    async with make_broker(kind, url) as opened:
        yield opened


def messages(topic: str, numbers: range | list[int], tag: str = "") -> list[Message]:
    return [
        Message(f"{tag}m-{n}", topic, "Fault.Noted", "k", str(n).encode(), {"n": str(n)})
        for n in numbers
    ]


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int(d.message.headers["n"]) for d in deliveries]


def new_topic() -> str:
    return f"faults.{uuid.uuid4().hex[:12]}"


async def until_available(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again while it raises BrokerUnavailable, for up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await call()
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def consume_all(broker: Broker, topic: str, count: int) -> list[Delivery]:
    """Consume and acknowledge until ``count`` deliveries came (riding out outages)."""
    out: list[Delivery] = []
    deadline = time.monotonic() + WAIT
    while len(out) < count:
        assert time.monotonic() < deadline, f"{len(out)} of {count}: {numbers(out)}"
        try:
            got = await broker.consume(topic, "g", "c-1", max_messages=count - len(out), wait=0.2)
            await broker.ack(topic, "g", got)
        except BrokerUnavailable:
            await asyncio.sleep(0.05)
            continue
        out.extend(got)
    return out


# -- the server restarts --------------------------------------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_a_restarted_server_loses_nothing_and_the_broker_recovers(
    kind: str, server: Server, broker: Broker, kill: bool
) -> None:
    topic = new_topic()
    await broker.create_group(topic, "g")
    assert (await broker.publish(messages(topic, range(1, 51)), sequences=range(1, 51))).new == 50
    first = await consume_all(broker, topic, 20)

    await asyncio.to_thread(server.restart, kill=kill)

    # The same broker object, not reopened: the first calls may find the server still
    # coming back, then everything works. Retrying a publish is safe with sequences.
    await until_available(
        lambda: broker.publish(messages(topic, range(1, 101)), sequences=range(1, 101))
    )
    got = numbers(first)
    if kind == "nats" and kill:
        # NATS 2.9 writes consumer state lazily: SIGKILLed, it may forget acknowledgements
        # it confirmed, and deliver those messages again. Nothing is lost; the inbox (not
        # the broker) absorbs repeats. Consume until every number is back.
        rest: list[Delivery] = []
        deadline = time.monotonic() + WAIT
        while set(got) | set(numbers(rest)) != set(range(1, 101)):
            assert time.monotonic() < deadline, f"missing {set(range(1, 101)) - set(got)}"
            rest.extend(await consume_all(broker, topic, 1))
        assert sorted(set(got + numbers(rest))) == list(range(1, 101))
        return
    rest = await consume_all(broker, topic, 80)
    assert got + numbers(rest) == list(range(1, 101))
    assert await broker.length(topic) == 100
    again = await redeliveries(broker, topic)
    if kind == "nats" and kill:
        # JetStream writes a consumer's acknowledgements to disk lazily: SIGKILLed, it can
        # forget some it confirmed, and delivers those messages again (at least once).
        assert set(numbers(again)) <= set(numbers(first))
        assert all(d.attempt >= 2 for d in again)
    else:
        assert again == []
    await broker.delete_topic(topic)


async def redeliveries(broker: Broker, topic: str) -> list[Delivery]:
    """What the group still gets (redelivered after a short ack timeout) until it has
    nothing pending."""
    out: list[Delivery] = []
    deadline = time.monotonic() + WAIT
    while await broker.pending(topic, "g"):
        assert time.monotonic() < deadline, f"still pending; redelivered {numbers(out)}"
        got = await broker.consume(topic, "g", "c-1", wait=0.2, ack_timeout=0.5)
        await broker.ack(topic, "g", got)
        out.extend(got)
    return out


# -- the network goes away ------------------------------------------------------------------


async def test_a_cut_connection_raises_broker_unavailable_and_the_broker_recovers(
    kind: str, url: str, loop_errors: list[object]
) -> None:
    proxy = Proxy(int(url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    topic = new_topic()
    proxied = url.replace(f":{proxy.target}", f":{proxy.port}")
    try:
        async with make_broker(kind, proxied) as broker:
            await broker.create_group(topic, "g")
            await broker.publish(messages(topic, [1]), sequences=[1])
            assert numbers(await consume_all(broker, topic, 1)) == [1]
            await proxy.cut()
            with pytest.raises(BrokerUnavailable):
                await broker.publish(messages(topic, [2]), sequences=[2])
            with pytest.raises(BrokerUnavailable):
                await broker.consume(topic, "g", "c-1", wait=0.1)
            await proxy.resume()
            await until_available(lambda: broker.publish(messages(topic, [2, 3]), sequences=[2, 3]))
            assert numbers(await consume_all(broker, topic, 2)) == [2, 3]
            await broker.delete_topic(topic)
    finally:
        await proxy.stop()


async def test_an_unreachable_server_raises_broker_unavailable(kind: str) -> None:
    broker = make_broker(kind, f"{kind}://127.0.0.1:{free_port()}", timeout=0.5)
    with pytest.raises(BrokerUnavailable):
        await broker.open()
    await broker.close()


# -- entries obelisk did not write ----------------------------------------------------------


async def _inject(broker: Broker, topic: str) -> int:
    """Append foreign entries of every kind to ``topic``; returns how many."""
    truncated = msgspec.msgpack.encode(messages(topic, [0])[0])[:-3]
    wrong_shape = msgspec.msgpack.encode({"id": 1, "topic": ["not", "a", "string"]})
    # A map with an unknown key holding lists 1,000 deep: msgspec recurses into it while
    # skipping it, to a RecursionError (not a DecodeError).
    deep = b"\x81\xa1x" + b"\x91" * 1000 + b"\x90"
    if isinstance(broker, RedisBroker):
        key = broker.prefix + topic
        for fields in (
            {b"m": b""},
            {b"m": truncated},
            {b"m": wrong_shape},
            {b"m": b'{"json": true}'},
            {b"m": deep},
            {b"other": b"field", b"and": b"\xff\xfe"},
        ):
            await broker.client.xadd(key, fields)
        return 6
    assert isinstance(broker, NatsBroker)
    subject = topic_subjects(broker.prefix, topic).replace(">", "foreign")
    for data in (b"", truncated, wrong_shape, b'{"json": true}', deep):
        await broker.js.publish(subject, data, headers={"X-Other": "program"})
    return 5


async def test_foreign_entries_are_delivered_marked_and_consuming_goes_on(
    broker: Broker,
) -> None:
    topic = new_topic()
    await broker.create_group(topic, "g")
    await broker.publish(messages(topic, [1]))
    foreign = await _inject(broker, topic)
    await broker.publish(messages(topic, [2, 3]))
    got = await consume_all(broker, topic, foreign + 3)
    marked = [d for d in got if MALFORMED in d.message.headers]
    good = [d for d in got if MALFORMED not in d.message.headers]
    assert len(marked) == foreign
    assert numbers(good) == [1, 2, 3]
    assert got[0] is good[0] and got[-2:] == good[1:]  # in stream order
    for delivery in marked:
        assert delivery.message.topic == topic
        assert delivery.message.headers[MALFORMED].startswith("not an obelisk message")
        assert delivery.attempt == 1
    assert await broker.pending(topic, "g") == 0  # the marked ones were acknowledged too
    read = await broker.read(topic, limit=100)
    assert [MALFORMED in item.message.headers for item in read] == [
        MALFORMED in d.message.headers for d in got
    ]
    # Sequenced publishing still finds the topic's last sequence behind foreign entries.
    await broker.publish(messages(topic, [7]), sequences=[7])
    await _inject(broker, topic)
    assert (await broker.publish(messages(topic, [7, 8]), sequences=[7, 8])).new == 1
    await broker.delete_topic(topic)


# -- publishers racing on one topic ---------------------------------------------------------


@pytest.mark.parametrize("same_ids", [True, False], ids=["failover", "distinct"])
async def test_racing_sequenced_publishers_store_each_sequence_once_in_order(
    kind: str, url: str, same_ids: bool, loop_errors: list[object]
) -> None:
    # Two relays (a failover overlap), each with its own connection, publish the same
    # sequences in batches at the same time: every sequence is stored once, in order.
    topic = new_topic()
    total, size = 400, 40

    async def relay(tag: str) -> None:
        async with make_broker(kind, url) as broker:
            for start in range(1, total + 1, size):
                batch = range(start, start + size)
                await broker.publish(messages(topic, batch, tag), sequences=batch)

    await asyncio.gather(relay("" if same_ids else "a-"), relay("" if same_ids else "b-"))
    async with make_broker(kind, url) as reader:
        stored: list[int] = []
        after: str | None = None
        while page := await reader.read(topic, after=after, limit=100):
            stored += [int(item.message.headers["n"]) for item in page]
            after = page[-1].cursor
        assert stored == list(range(1, total + 1))
        await reader.delete_topic(topic)


async def test_unsequenced_publishes_racing_a_relay_neither_reorder_nor_drop_its_messages(
    kind: str, url: str, loop_errors: list[object]
) -> None:
    # Jobs published straight to a topic while the relay publishes to it: the relay's
    # chain is cut by the foreign messages and resumes; its sequences stay whole, in order.
    topic = new_topic()
    total, size = 300, 30

    async def relay() -> None:
        async with make_broker(kind, url) as broker:
            for start in range(1, total + 1, size):
                batch = range(start, start + size)
                await broker.publish(messages(topic, batch), sequences=batch)

    async def jobs() -> None:
        async with make_broker(kind, url) as broker:
            for n in range(1000, 1000 + total, 3):
                await broker.publish(messages(topic, [n, n + 1, n + 2], "job-"))

    await asyncio.gather(relay(), jobs())
    async with make_broker(kind, url) as reader:
        stored = [int(item.message.headers["n"]) for item in await reader.read(topic, limit=1000)]
        assert [n for n in stored if n < 1000] == list(range(1, total + 1))
        assert sorted(n for n in stored if n >= 1000) == list(range(1000, 1000 + total))
        await reader.delete_topic(topic)
