"""Publish throughput of NatsBroker and RedisBroker beside their raw clients.

    .venv/bin/python scripts/bench_brokers.py [--messages 50000] [--batch 1000] [--runs 3]

Each run publishes ``--messages`` messages of about 200 encoded bytes in batches of
``--batch`` to a fresh throwaway server (redis-server, nats-server with JetStream) and
waits for every batch to be acknowledged. The obelisk runs publish with sequences (what
the outbox relay does); the raw baselines send the same encoded bytes: redis-py pipelining
XADD (one pipeline per batch), nats-py ``publish_async`` (one gather of acks per batch).
Prints the median of ``--runs`` in messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from obelisk.messaging import Message
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker
from obelisk.servers.nats import ThrowawayNats
from obelisk.servers.redis import ThrowawayRedis

TOPIC = "Bench.events"


def make_messages(count: int) -> list[Message]:
    return [
        Message(
            id=str(uuid.uuid4()),
            topic=TOPIC,
            subject="Account.MoneyDeposited",
            key=f"acct-{n % 100}",
            payload=b'{"amount": %d, "currency": "EUR"}' % n,
            headers={"obelisk-type": "MoneyDeposited", "obelisk-position": str(n + 1)},
        )
        for n in range(count)
    ]


async def obelisk_nats(url: str, batches: list[list[Message]]) -> None:
    async with NatsBroker(url) as broker:
        position = 0
        for batch in batches:
            sequences = range(position + 1, position + len(batch) + 1)
            position += len(batch)
            assert (await broker.publish(batch, sequences=sequences)).new == len(batch)


async def obelisk_redis(url: str, batches: list[list[Message]]) -> None:
    async with RedisBroker(url) as broker:
        position = 0
        for batch in batches:
            sequences = range(position + 1, position + len(batch) + 1)
            position += len(batch)
            assert (await broker.publish(batch, sequences=sequences)).new == len(batch)


async def raw_nats(url: str, batches: list[list[Message]]) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=max(len(b) for b in batches) * 2)
    await js.add_stream(name="RAW", subjects=["raw.>"])
    encode = msgspec.msgpack.Encoder().encode
    for batch in batches:
        futures = [
            await js.publish_async(
                "raw.Account.MoneyDeposited", encode(m), headers={"Nats-Msg-Id": m.id}
            )
            for m in batch
        ]
        await asyncio.gather(*futures)
    await nc.close()


async def raw_redis(url: str, batches: list[list[Message]]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    encode = msgspec.msgpack.Encoder().encode
    for batch in batches:
        pipe = client.pipeline(transaction=False)
        for m in batch:
            pipe.xadd("raw", {b"m": encode(m)})
        await pipe.execute()
    await client.aclose()


Runner = Callable[[str, list[list[Message]]], Coroutine[Any, Any, None]]


def measure(server_type: type[ThrowawayRedis] | type[ThrowawayNats], run: Runner,
            messages: list[Message], batch: int) -> float:  # fmt: skip
    batches = [messages[i : i + batch] for i in range(0, len(messages), batch)]
    with server_type() as server:
        started = time.perf_counter()
        asyncio.run(run(server.url, batches))
        elapsed = time.perf_counter() - started
    return len(messages) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    messages = make_messages(args.messages)
    size = statistics.mean(len(msgspec.msgpack.encode(m)) for m in messages[:1000])
    print(f"{args.messages} messages of {size:.0f} encoded bytes, batches of {args.batch}")
    cases: list[tuple[str, type[ThrowawayRedis] | type[ThrowawayNats], Runner]] = [
        ("NatsBroker.publish (sequenced)", ThrowawayNats, obelisk_nats),
        ("nats-py publish_async (raw)", ThrowawayNats, raw_nats),
        ("RedisBroker.publish (sequenced)", ThrowawayRedis, obelisk_redis),
        ("redis-py pipeline XADD (raw)", ThrowawayRedis, raw_redis),
    ]
    for name, server_type, run in cases:
        rates = [measure(server_type, run, messages, args.batch) for _ in range(args.runs)]
        print(f"{name:34} {statistics.median(rates):>10,.0f} msg/s  (runs: "
              + ", ".join(f"{r:,.0f}" for r in rates) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
