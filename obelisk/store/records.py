"""The values that cross the EventStore port: append requests and results, stored envelopes."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Final
from uuid import UUID

import msgspec

from obelisk.domain.events import Event, UndecodableEvent
from obelisk.errors import CorruptEvent, InvalidStreamId, UnknownEventType

__all__ = [
    "ANY",
    "MAX_STREAM_ID_LENGTH",
    "NO_STREAM",
    "AppendRequest",
    "AppendResult",
    "StoredEvent",
    "Snapshot",
    "StreamInfo",
    "StreamSize",
    "new_event_id",
    "undecodable_error",
    "validate_stream_id",
]

NO_STREAM: Final = 0
"""Expected version of a stream that must not exist yet."""
ANY: Final = -1
"""Expected version that skips the optimistic-concurrency check."""
MAX_STREAM_ID_LENGTH: Final = 200


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if valid, else raise :class:`InvalidStreamId` saying why."""
    if not isinstance(stream_id, str):
        raise InvalidStreamId(f"stream id must be a str, got {type(stream_id).__name__}")
    if not stream_id:
        raise InvalidStreamId("stream id must not be empty")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamId(
            f"stream id is {len(stream_id)} characters; the limit is {MAX_STREAM_ID_LENGTH}"
        )
    # isprintable() is False for control characters (and for separators such as U+2028):
    # ids end up in logs, subjects and URLs, where those characters break things.
    if not stream_id.isprintable():
        raise InvalidStreamId(f"stream id {stream_id!r} holds control or non-printable characters")
    return stream_id


_rand = random.Random()


def new_event_id() -> bytes:
    """A time-ordered 16-byte id (UUIDv7 layout).

    Ordered ids keep the unique index on event ids appending at its right edge instead of
    splitting random pages; the 74 random bits make collisions negligible.
    """
    ms = time.time_ns() // 1_000_000
    value = (ms & 0xFFFFFFFFFFFF) << 80 | _rand.getrandbits(80)
    value = value & ~(0xF << 76) | (0x7 << 76)  # version 7
    value = value & ~(0x3 << 62) | (0x2 << 62)  # RFC 4122 variant
    return value.to_bytes(16, "big")


class AppendRequest(msgspec.Struct, frozen=True):
    """Events for one stream, as part of an append.

    Attributes:
        stream_id: the stream to append to.
        events: the events, oldest first.
        expected_version: NO_STREAM, ANY or the exact current version of the stream.
        stream_type: recorded with a new stream (the aggregate type), shown by tools.
        event_ids: one id per event; a retried append with the same ids is a no-op that
            returns the first result. Generated when omitted.
        correlation_id: carried in every event's envelope.
        causation_id: carried in every event's envelope.
        trace_context: the W3C ``traceparent`` of the trace that wrote the events, carried
            in every event's envelope, so that whoever handles them later (a projection, a
            relay, a worker in another process) can link its spans to that trace.
    """

    stream_id: str
    events: Sequence[Event]
    expected_version: int = ANY
    stream_type: str | None = None
    event_ids: Sequence[UUID] | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    trace_context: str | None = None


class AppendResult(msgspec.Struct, frozen=True, gc=False):
    """Where an append to one stream landed.

    ``version`` is the stream's version after the append; the events took the global
    positions ``first_position .. last_position``.
    """

    stream_id: str
    version: int
    first_position: int
    last_position: int


class StoredEvent(msgspec.Struct, frozen=True):
    """An event with its envelope, as read back from a store."""

    position: int
    stream_id: str
    version: int
    event: Event
    raw_event_id: bytes
    recorded_at: float
    correlation_id: str | None = None
    causation_id: str | None = None
    trace_context: str | None = None
    # The aggregate type named by the stream's first append: on its first event (stores
    # may repeat it on later ones); None when the append named none.
    stream_type: str | None = None

    @property
    def event_id(self) -> UUID:
        """The event's id (the 16 stored bytes, as a UUID)."""
        return UUID(bytes=self.raw_event_id)

    @property
    def event_type(self) -> str:
        """The stable type name of the event (the stored one, for an undecodable row)."""
        event = self.event
        if type(event) is UndecodableEvent:
            return event.type_name
        return event.event_type


class StreamInfo(msgspec.Struct, frozen=True, gc=False):
    """One stream, as listed for tools."""

    stream_id: str
    stream_type: str | None
    version: int
    event_count: int


class Snapshot(msgspec.Struct, frozen=True):
    """An aggregate's state at a version, stored beside its events to shorten loads.

    Attributes:
        stream_id: the aggregate's stream.
        version: the stream version the state reflects (events 1..version applied).
        aggregate_type: the class's ``aggregate_type``; a snapshot of another type is ignored.
        schema_version: the class's ``state_version`` when it was taken; another is ignored.
        state: the encoded state (see ``obelisk.domain.state``).
        taken_at: when it was taken, seconds since the epoch.
    """

    stream_id: str
    version: int
    aggregate_type: str
    schema_version: int
    state: bytes
    taken_at: float


class StreamSize(msgspec.Struct, frozen=True, gc=False):
    """How big one stream is, for ``obelisk inspect``.

    ``data_bytes`` counts the encoded event payloads; ``snapshot_version`` is the version
    of the stream's snapshot (None without one).
    """

    stream_id: str
    stream_type: str | None
    events: int
    data_bytes: int
    snapshot_version: int | None


def undecodable_error(stored: StoredEvent) -> UnknownEventType | CorruptEvent:
    """The error a plain read raises for the undecodable row ``stored`` stands for."""
    event = stored.event
    assert isinstance(event, UndecodableEvent)
    if event.unknown_type:
        return UnknownEventType(event.type_name, stored.stream_id, stored.version, stored.position)
    return CorruptEvent(event.error, stored.stream_id, stored.version, stored.position)
