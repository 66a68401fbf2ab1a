"""A relay or a worker in a process of its own, for the SIGKILL tests of messaging.

Run by ``test_messaging_faults.py``::

    python _messaging_child.py relay --broker redis --url URL --topic T --events E.db ...
    python _messaging_child.py worker --broker redis --url URL --topic T --group G ...

It prints, flushed at once, one line per step the parent waits for before it kills:

* relay: ``p LAST`` when a page (up to sequence LAST) is published, ``c POSITION`` when
  the checkpoint moved. ``--stall-after-publish K`` hangs after the K-th page's publish,
  before its checkpoint: a kill then lands exactly between the two.
* worker: ``h ID ATTEMPT`` when the handler has a message. ``--block`` makes the handler
  hang there (a kill finds it in flight, unacknowledged). ``--inbox R.db`` runs the handler
  in the inbox's transaction (one ``effects`` row per message, incremented);
  ``--lose-acks`` makes acknowledgements hang after printing ``a N``: the handler
  committed, the broker never heard of it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import obelisk.demo.bank  # noqa: F401 - registers the events the relay reads
from obelisk.messaging.broker import Broker
from obelisk.messaging.inbox import Inbox
from obelisk.messaging.message import Delivery, Message
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker
from obelisk.messaging.relay import OutboxRelay
from obelisk.messaging.worker import MessageContext, MessageWorker
from obelisk.projections import ProjectionRunner, read_store_from_url
from obelisk.store.url import store_from_url

EFFECTS_DDL = "CREATE TABLE IF NOT EXISTS effects (message_id TEXT PRIMARY KEY, times INTEGER)"
EFFECT_SQL = (
    "INSERT INTO effects (message_id, times) VALUES (?, 1) "
    "ON CONFLICT (message_id) DO UPDATE SET times = times + 1"
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def open_broker(kind: str, url: str, prefix: str) -> Broker:
    if kind == "redis":
        return RedisBroker(url, prefix=f"{prefix}:")
    return NatsBroker(url, stream_prefix=prefix)


async def relay(args: argparse.Namespace, broker: Broker) -> None:
    published = 0
    publish = broker.publish

    async def publish_then_say(
        messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Any:
        nonlocal published
        result = await publish(messages, sequences=sequences)
        published += 1
        say(f"p {sequences[-1] if sequences else 0}")
        if published == args.stall_after_publish:
            await asyncio.sleep(3600)  # killed here: published, checkpoint not moved
        return result

    broker.publish = publish_then_say  # type: ignore[method-assign]
    store = store_from_url(f"sqlite:///{args.events}")
    async with store, read_store_from_url(f"sqlite:///{args.read}") as read_store:
        runner = OutboxRelay(
            store,
            read_store,
            broker,
            topic=args.topic,
            page_size=args.page_size,
            lease_seconds=30.0,  # a restart under the same owner takes the lease back at once
            poll_interval=0.05,
            owner=args.owner,
        )

        def committed(done: ProjectionRunner) -> None:
            say(f"c {done.position}")

        runner.on_batch = committed
        await runner.run()


async def worker(args: argparse.Namespace, broker: Broker) -> None:
    if args.lose_acks:

        async def ack_never_arrives(topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
            say(f"a {len(deliveries)}")
            await asyncio.sleep(3600)  # killed here: handled and committed, not acknowledged

        broker.ack = ack_never_arrives  # type: ignore[method-assign]

    async def handle(ctx: MessageContext) -> None:
        say(f"h {ctx.message.id} {ctx.attempt}")
        if ctx.tx is not None:
            await ctx.tx.execute(EFFECT_SQL, ctx.message.id)
        if args.block:
            await asyncio.sleep(3600)  # killed here: in flight, unacknowledged

    if args.inbox is None:
        consumer = MessageWorker(
            broker, handle, group=args.group, topic=args.topic, fetch_wait=0.1, ack_timeout=1.0
        )
        await consumer.run()
        return
    async with read_store_from_url(f"sqlite:///{args.inbox}") as read_store:
        async with read_store.transaction() as tx:
            await tx.execute(EFFECTS_DDL)
        consumer = MessageWorker(
            broker,
            handle,
            group=args.group,
            topic=args.topic,
            inbox=Inbox(read_store),
            fetch_wait=0.1,
            ack_timeout=1.0,
        )
        await consumer.run()


async def main(args: argparse.Namespace) -> None:
    async with open_broker(args.broker, args.url, args.prefix) as broker:
        if args.mode == "relay":
            await relay(args, broker)
        else:
            await worker(args, broker)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["relay", "worker"])
    parser.add_argument("--broker", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True, help="as for new_broker")
    parser.add_argument("--topic", required=True)
    # relay
    parser.add_argument("--events")
    parser.add_argument("--read")
    parser.add_argument("--owner", default="relay-child")
    parser.add_argument("--page-size", type=int, default=20)
    parser.add_argument("--stall-after-publish", type=int, default=0)
    # worker
    parser.add_argument("--group")
    parser.add_argument("--inbox")
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--lose-acks", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(arguments()))
