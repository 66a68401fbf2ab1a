"""Asynchronous processing: brokers, the outbox relay, workers, the inbox, consumers.

Adapters are imported lazily: ``obelisk.messaging`` needs neither redis-py nor nats-py
until a Redis or NATS broker is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from obelisk.errors import ValidationError
from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.message import (
    CAUSATION_ID,
    CORRELATION_ID,
    EVENT_TYPE,
    MALFORMED,
    POSITION,
    SCHEMA_VERSION,
    STREAM_ID,
    STREAM_VERSION,
    TRACEPARENT,
    Delivery,
    Message,
    validate_topic,
)
from obelisk.store.url_options import split_url

if TYPE_CHECKING:
    from obelisk.messaging.consumers import Consumers
    from obelisk.messaging.inbox import Inbox
    from obelisk.messaging.nats import NatsBroker
    from obelisk.messaging.redis import RedisBroker
    from obelisk.messaging.relay import OutboxRelay
    from obelisk.messaging.worker import Backoff, MessageContext, MessageWorker

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "EVENT_TYPE",
    "MALFORMED",
    "POSITION",
    "SCHEMA_VERSION",
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
    "NatsBroker",
    "OutboxRelay",
    "Published",
    "RedisBroker",
    "TopicMessage",
    "broker_from_url",
    "validate_topic",
]

_LAZY = {
    "Backoff": "obelisk.messaging.worker",
    "MessageContext": "obelisk.messaging.worker",
    "MessageWorker": "obelisk.messaging.worker",
    "Consumers": "obelisk.messaging.consumers",
    "Inbox": "obelisk.messaging.inbox",
    "OutboxRelay": "obelisk.messaging.relay",
    # The adapters, loaded on first use: RedisBroker needs redis-py when opened, the
    # module of NatsBroker needs nats-py.
    "RedisBroker": "obelisk.messaging.redis",
    "NatsBroker": "obelisk.messaging.nats",
}


def __getattr__(name: str) -> Any:
    # The relay and workers import the projections package: loaded when first used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'obelisk.messaging' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def broker_from_url(url: str) -> Broker:
    """The broker a URL names (not opened yet: ``async with broker_from_url(url) as b``).

    * ``memory://`` — in process memory (users' unit tests).
    * ``redis://host:port/db`` (or ``rediss://`` for TLS) — Redis Streams.
    * ``nats://host:port`` (or ``tls://``; several servers comma-separated) — NATS
      JetStream.

    Raises:
        ValidationError: (a ``ValueError``) an unknown scheme, or the client library the
            URL needs is missing.
    """
    scheme = split_url(url, "broker").scheme
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        _require("redis", url, "redis-py")
        from obelisk.messaging.redis import RedisBroker

        return RedisBroker(url)
    if scheme in ("nats", "tls"):
        _require("nats", url, "nats-py")
        from obelisk.messaging.nats import NatsBroker

        return NatsBroker(url)
    raise ValidationError(
        f"unsupported broker URL {url!r}: use redis://host:port/db, nats://host:port or memory://"
    )


def _require(module: str, url: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValidationError(f"{url!r} needs {package}: pip install 'obelisk[messaging]'")
