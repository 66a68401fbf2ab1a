"""An in-memory broker for users' unit tests: the port's semantics, in one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from obelisk.errors import BrokerError
from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.message import Delivery, Message, validate_topic

__all__ = ["MemoryBroker"]


@dataclass
class _Group:
    start: int = 0  # the first index the group sees (the topic's length for from_now)
    next_index: int = 0
    # index -> (deliveries so far, deadline of the current delivery)
    in_flight: dict[int, tuple[int, float]] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)


@dataclass
class _Topic:
    messages: list[Message] = field(default_factory=list)
    last_sequence: int = -1
    groups: dict[str, _Group] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryBroker(Broker):
    """Topics as lists, groups as cursors: nothing survives the process."""

    name = "memory"

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[validate_topic(name)] = _Topic()
        return topic

    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        if sequences is not None and len(sequences) != len(messages):
            raise BrokerError("one sequence per message")
        for message in messages:  # a bad topic anywhere in the batch: nothing is appended
            validate_topic(message.topic)
        new = duplicates = 0
        for i, message in enumerate(messages):
            topic = self._topic(message.topic)
            if sequences is not None:
                if sequences[i] <= topic.last_sequence:
                    duplicates += 1
                    continue
                topic.last_sequence = sequences[i]
            topic.messages.append(message)
            topic.arrived.set()
            new += 1
        return Published(new, duplicates)

    async def create_group(self, topic: str, group: str, *, from_now: bool = False) -> None:
        state = self._topic(topic)
        if group not in state.groups:
            start = len(state.messages) if from_now else 0
            state.groups[group] = _Group(start, start)

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
        state = self._topic(topic)
        if group not in state.groups:
            raise BrokerError(f"no group {group!r} on topic {topic!r}")
        deadline = time.monotonic() + wait
        while True:
            out = self._take(state, state.groups[group], max_messages, ack_timeout)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            state.arrived.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.05)):
                    await state.arrived.wait()
            except TimeoutError:
                pass

    def _take(self, state: _Topic, group: _Group, limit: int, ack_timeout: float) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        for index, (count, due) in sorted(group.in_flight.items()):
            if len(out) >= limit:
                return out
            if due <= now:
                group.in_flight[index] = (count + 1, now + ack_timeout)
                out.append(Delivery(state.messages[index], count + 1, index))
        while len(out) < limit and group.next_index < len(state.messages):
            index = group.next_index
            group.next_index += 1
            group.in_flight[index] = (1, now + ack_timeout)
            out.append(Delivery(state.messages[index], 1, index))
        return out

    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        state = self._topic(topic).groups.get(group)
        if state is None:
            raise BrokerError(f"no group {group!r} on topic {topic!r}")
        for delivery in deliveries:
            index = delivery.handle
            state.in_flight.pop(index, None)
            state.acked.add(index)

    async def read(
        self, topic: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicMessage]:
        start = 0 if after is None else int(after) + 1
        messages = self._topic(topic).messages
        return [
            TopicMessage(str(i), messages[i])
            for i in range(start, min(len(messages), start + limit))
        ]

    async def length(self, topic: str) -> int:
        return len(self._topic(topic).messages)

    async def pending(self, topic: str, group: str) -> int:
        state = self._topic(topic)
        found = state.groups.get(group)
        if found is None:
            return len(state.messages)
        return len(state.messages) - found.start - len(found.acked)

    async def delete_topic(self, topic: str) -> None:
        self._topics.pop(topic, None)
