"""Messages on a broker: what the relay publishes, what workers receive.

A :class:`Message` is broker-neutral: an id (the de-duplication key: publishing the same id
twice delivers it once), a topic (the broker stream it goes to), a subject (what it is:
``<aggregate type>.<event type>`` for relayed events, ``job.<name>`` for jobs), a key (the
ordering key: messages with one key are handled in order), the payload bytes and string
headers (type, position, correlation, causation, trace context).
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from obelisk.errors import ValidationError

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "EVENT_TYPE",
    "MALFORMED",
    "POSITION",
    "RECORDED_AT",
    "SCHEMA_VERSION",
    "STREAM_ID",
    "STREAM_VERSION",
    "TRACEPARENT",
    "Delivery",
    "Message",
    "validate_topic",
]

# Header names (lower case: HTTP-like, and NATS keeps them as given).
EVENT_TYPE: Final = "obelisk-type"
SCHEMA_VERSION: Final = "obelisk-schema-version"
POSITION: Final = "obelisk-position"
STREAM_ID: Final = "obelisk-stream"
STREAM_VERSION: Final = "obelisk-version"
CORRELATION_ID: Final = "obelisk-correlation-id"
CAUSATION_ID: Final = "obelisk-causation-id"
TRACEPARENT: Final = "traceparent"
RECORDED_AT: Final = "obelisk-recorded-at"  # the event's commit time (epoch seconds)
MALFORMED: Final = "obelisk-malformed"  # set by adapters on entries that do not decode

_TOPIC: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def validate_topic(topic: str) -> str:
    """``topic`` if it is dot-separated tokens of letters, digits, ``_`` and ``-``."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or len(topic) > 200:
        raise ValidationError(f"topic {topic!r} must be dot-separated [A-Za-z0-9_-] tokens")
    return topic


class Message(msgspec.Struct, frozen=True):
    """One message. ``id`` de-duplicates; ``key`` orders (one key: one at a time, in order)."""

    id: str
    topic: str
    subject: str
    key: str
    payload: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class Delivery(msgspec.Struct):
    """A message as a consumer received it: ``attempt`` counts deliveries (1 the first
    time); ``handle`` is the adapter's own reference for acknowledging it."""

    message: Message
    attempt: int
    handle: Any = None
