"""The broker port: publish messages to topics, consume them in groups with acknowledgement.

Semantics every adapter provides (the contract suite in ``obelisk.testing.broker_contract``
checks them against real servers):

* **Topics** are streams of messages in publish order. ``publish`` appends a batch in order.
* **Sequenced publishing** (the outbox relay's): a message with a ``sequence`` is dropped if
  a message with the same or a higher sequence was published to its topic before. The relay
  sets the event's global position, so a relay that crashed after publishing and before
  saving its checkpoint publishes nothing twice when it starts again.
* **Groups**: each group sees every message of a topic once (work shared among its
  consumers); several groups each see all of them. A group starts at the beginning of the
  topic unless created with ``from_now``.
* **Acknowledgement**: a delivered message that is not acknowledged within the group's
  ``ack_timeout`` is delivered again — to any consumer of the group — with ``attempt``
  counting deliveries. So a consumer that dies loses nothing; handlers must tolerate
  redelivery (the inbox makes that easy).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import msgspec

from obelisk.messaging.message import Delivery, Message

__all__ = ["Broker", "Published", "TopicMessage"]


class Published(msgspec.Struct, frozen=True):
    """What a publish did: ``new`` messages appended, ``duplicates`` dropped."""

    new: int
    duplicates: int


class TopicMessage(msgspec.Struct, frozen=True):
    """A message read from a topic without consuming it (for tools: the dead-letter list)."""

    cursor: str
    message: Message


class Broker(abc.ABC):
    """A message broker (Redis Streams, NATS JetStream, or memory for unit tests)."""

    name: str = "broker"

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect (published messages stay published)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        """Append ``messages`` in order. With ``sequences`` (one per message, increasing
        per topic), a message whose sequence is not above its topic's last published one
        is dropped as a duplicate.

        Raises:
            BrokerUnavailable: the broker cannot be reached; nothing is known published.
        """

    @abc.abstractmethod
    async def create_group(self, topic: str, group: str, *, from_now: bool = False) -> None:
        """Create consumer group ``group`` on ``topic`` (idempotent)."""

    @abc.abstractmethod
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
        """Up to ``max_messages`` deliveries for ``consumer`` of ``group``: messages
        unacknowledged for over ``ack_timeout`` first (redelivered), then new ones. Waits
        up to ``wait`` seconds when there are none. The group must exist."""

    @abc.abstractmethod
    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge: these deliveries will not be delivered to ``group`` again."""

    @abc.abstractmethod
    async def read(
        self, topic: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicMessage]:
        """Messages of ``topic`` after the cursor ``after``, oldest first, without consuming
        them (tools, dead-letter listings)."""

    @abc.abstractmethod
    async def length(self, topic: str) -> int:
        """How many messages ``topic`` holds."""

    @abc.abstractmethod
    async def pending(self, topic: str, group: str) -> int:
        """Messages of ``topic`` that ``group`` has not acknowledged yet (delivered or not)."""

    async def delete_topic(self, topic: str) -> None:  # noqa: B027 - optional for tests
        """Remove a topic and its groups (tests and tools)."""
