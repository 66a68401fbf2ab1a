"""Asynchronous processing: brokers, the outbox relay, workers, the inbox, consumers.

Adapters are imported lazily: ``obelisk.messaging`` needs neither redis-py nor nats-py
until a Redis or NATS broker is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.message import (
    CAUSATION_ID,
    CORRELATION_ID,
    EVENT_TYPE,
    MALFORMED,
    POSITION,
    STREAM_ID,
    STREAM_VERSION,
    TRACEPARENT,
    Delivery,
    Message,
)

if TYPE_CHECKING:
    from obelisk.messaging.consumers import Consumers
    from obelisk.messaging.inbox import Inbox
    from obelisk.messaging.relay import OutboxRelay
    from obelisk.messaging.worker import Backoff, MessageContext, MessageWorker

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "EVENT_TYPE",
    "MALFORMED",
    "POSITION",
    "STREAM_ID",
    "STREAM_VERSION",
    "TRACEPARENT",
    "Backoff",
    "Broker",
    "Consumers",
    "Delivery",
    "Inbox",
    "MemoryBroker",
    "Message",
    "MessageContext",
    "MessageWorker",
    "OutboxRelay",
    "Published",
    "TopicMessage",
    "broker_from_url",
]

_LAZY = {
    "Backoff": "obelisk.messaging.worker",
    "MessageContext": "obelisk.messaging.worker",
    "MessageWorker": "obelisk.messaging.worker",
    "Consumers": "obelisk.messaging.consumers",
    "Inbox": "obelisk.messaging.inbox",
    "OutboxRelay": "obelisk.messaging.relay",
}


def __getattr__(name: str) -> Any:
    # The relay and workers import the projections package: loaded when first used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'obelisk.messaging' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def broker_from_url(url: str) -> Broker:
    """A broker for ``memory://``, ``redis://host:port/db`` or ``nats://host:port``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        from obelisk.messaging.redis import RedisBroker

        return RedisBroker(url)
    if scheme in ("nats", "tls"):
        try:
            from obelisk.messaging.nats import NatsBroker  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ValueError(f"{url!r} needs nats-py: pip install 'obelisk[messaging]'") from exc
        broker: Broker = NatsBroker(url)
        return broker
    raise ValueError(f"unsupported broker URL {url!r}: use redis://, nats:// or memory://")
