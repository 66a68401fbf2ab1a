"""What the messaging integration tests share: brokers, waits and the bank log.

Servers are the session's (``redis_url``, ``nats_url`` in ``tests/conftest.py``); a test
that restarts a server starts its own. Each broker object gets a key prefix of its own and
each test topics and groups of its own (``Names``), so tests sharing a server never see
each other's messages.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.message import Delivery, Message
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker
from obelisk.store import ANY, NO_STREAM, AppendRequest, StoredEvent
from obelisk.store.base import EventStore

WAIT = 30.0  # bound on any wait for a condition: a hang fails the test, not the CI job
SERVER_KINDS = ["redis", "nats"]
ALL_KINDS = ["memory", *SERVER_KINDS]


def new_broker(kind: str, url: str, prefix: str | None = None) -> Broker:
    """A broker of ``kind`` on the server at ``url`` (``memory`` ignores the url), with
    its keys under ``prefix``: by default one of its own."""
    prefix = prefix or f"T{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        return MemoryBroker()
    if kind == "redis":
        return RedisBroker(url, prefix=f"{prefix}:")
    return NatsBroker(url, stream_prefix=prefix)


def server_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The url of the session's server of ``kind`` (started on first use)."""
    return "" if kind == "memory" else str(request.getfixturevalue(f"{kind}_url"))


@pytest.fixture(name="broker")
async def fixture_broker(
    kind: str, request: pytest.FixtureRequest, loop_errors: list[object]
) -> AsyncIterator[Broker]:
    """An open broker of the kind the test is parametrized with (``kind``)."""
    async with new_broker(kind, server_url(request, kind)) as opened:
        yield opened


class Names:
    """Topic and group names of one test (dot-free tokens: valid on every broker)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.topic = f"ev{tag}"
        self.group = f"g{tag}"

    def dlq(self, group: str | None = None) -> str:
        return f"dlq.{group or self.group}"


@pytest.fixture(name="names")
def fixture_names() -> Names:
    return Names()


class LostAcks(Broker):
    """A broker whose acknowledgements never arrive (the worker died before sending
    them); everything else goes to the real one."""

    name = "lost-acks"

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        return await self.inner.publish(messages, sequences=sequences)

    async def create_group(self, topic: str, group: str, *, from_now: bool = False) -> None:
        await self.inner.create_group(topic, group, from_now=from_now)

    async def consume(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        max_messages: int = 100,
        wait: float = 1.0,
        ack_timeout: float = 30.0,
    ) -> list[Delivery]:
        return await self.inner.consume(
            topic, group, consumer, max_messages=max_messages, wait=wait, ack_timeout=ack_timeout
        )

    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        pass

    async def read(
        self, topic: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicMessage]:
        return await self.inner.read(topic, after=after, limit=limit)

    async def length(self, topic: str) -> int:
        return await self.inner.length(topic)

    async def pending(self, topic: str, group: str) -> int:
        return await self.inner.pending(topic, group)


# -- waiting -----------------------------------------------------------------------------


async def until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, bound: float = WAIT
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {bound}s waiting for {what}")
        await asyncio.sleep(0.02)


async def stop_worker(worker: Any, task: asyncio.Task[None]) -> None:
    """Stop a worker (or relay) gracefully and wait, bounded, for its task to end."""
    worker.stop()
    await asyncio.wait_for(task, WAIT)


async def read_topic(broker: Broker, topic: str) -> list[Message]:
    """Every message of ``topic``, oldest first (read in pages, not consumed)."""
    out: list[Message] = []
    after: str | None = None
    while True:
        page = await broker.read(topic, after=after, limit=500)
        out.extend(entry.message for entry in page)
        if len(page) < 500:
            return out
        after = page[-1].cursor


def message(names: Names, key: str, n: int, **headers: str) -> Message:
    """A plain message (not a relayed event) with key ``key``; its payload is ``n``."""
    return Message(uuid.uuid4().hex, names.topic, "job.test", key, str(n).encode(), headers)


# -- the bank log --------------------------------------------------------------------------


async def open_accounts(store: EventStore, accounts: list[str]) -> None:
    await store.append_many(
        [AppendRequest(a, [AccountOpened(owner=f"owner-{a}")], NO_STREAM, "Account")
         for a in accounts]
    )  # fmt: skip


async def deposit(store: EventStore, amounts: dict[str, int]) -> None:
    await store.append_many(
        [AppendRequest(a, [MoneyDeposited(amount=n)], ANY, "Account") for a, n in amounts.items()]
    )


async def whole_log(store: EventStore) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    while page := await store.read_all(after=out[-1].position if out else 0, limit=1000):
        out.extend(page)
    return out


def fold_balances(events: list[StoredEvent]) -> dict[str, int]:
    """Balances per account, folded from the log (independently of any handler)."""
    balances: dict[str, int] = {}
    for stored in events:
        if isinstance(stored.event, AccountOpened):
            balances[stored.stream_id] = 0
        elif isinstance(stored.event, MoneyDeposited):
            balances[stored.stream_id] += stored.event.amount
    return balances


def sqlite_urls(folder: Path) -> tuple[str, str]:
    """Event store and read store URLs for SQLite files in ``folder``."""
    return f"sqlite:///{folder / 'events.db'}", f"sqlite:///{folder / 'read.db'}"
