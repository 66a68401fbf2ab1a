"""The outbox relay: the event log, published to a broker — never a dual write.

Commands only append events; the relay reads the log from its checkpoint (``read_all``, in
pages), publishes each page to the broker in one batch, then moves its checkpoint. The log
*is* the outbox: no event is committed without being published eventually, and none is
published without being committed.

Effectively once: each message carries its event's global position as its sequence, and
the broker drops sequences it has already seen on a topic. A relay killed after publishing
and before saving its checkpoint publishes the same page again when it restarts; the
broker keeps one copy. The checkpoint and the lease are the projection runner's (the relay
*is* a :class:`~obelisk.projections.ProjectionRunner` whose "read model" is the broker), so
a relay can run inside the application process or alone (``obelisk relay``), and two relays
of one name never publish at once.

An event that cannot be decoded here (its class is not imported by this process, or its
payload is corrupt) is published as stored: its raw payload, its stored type name and
schema version. The relay is a pipe, and the log is the truth: a worker that knows the
class decodes it, and one that cannot dead-letters it with the reason (its policy, never
a silent skip). The relay logs each one and counts it in ``undecodable``.

Topics and subjects: a message goes to ``topic`` (``events`` by default; with
``partitions=N``, ``events.p<k>`` where k is the partition of its stream, so N workers can
each own a partition and keep per-stream order across processes); its subject is
``<aggregate type>.<event type>``; its key is the stream id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from obelisk.domain.events import Event, UndecodableEvent
from obelisk.errors import (
    BrokerUnavailable,
    CorruptEvent,
    StoreUnavailable,
    UnknownEventType,
    ValidationError,
)
from obelisk.messaging import message as headers
from obelisk.messaging.broker import Broker
from obelisk.messaging.message import Message, validate_topic
from obelisk.projections.projection import Projection
from obelisk.projections.readstore import Claim, DeadLetter, ReadStore
from obelisk.projections.runner import OnCaughtUp, ProjectionRunner, partition_of
from obelisk.projections.tables import Table

if TYPE_CHECKING:
    from obelisk.store.base import EventStore
    from obelisk.store.records import StoredEvent

__all__ = ["OutboxRelay", "message_for"]

_log = logging.getLogger("obelisk.messaging.relay")

UNKNOWN_TYPE = "unknown"
_MAX_KNOWN_TYPES = 100_000


def message_for(
    stored: StoredEvent, payload: bytes, topic: str, stream_type: str | None = None
) -> Message:
    """The broker message of one stored event (``stream_type``: its aggregate type, when the
    event itself does not carry it)."""
    event = stored.event
    stream_type = stored.stream_type or stream_type or UNKNOWN_TYPE
    if type(event) is UndecodableEvent:
        event_type, schema_version = event.type_name, event.stored_schema_version
    else:
        event_type, schema_version = event.event_type, event.schema_version
    values = {
        headers.EVENT_TYPE: event_type,
        headers.SCHEMA_VERSION: str(schema_version),
        headers.POSITION: str(stored.position),
        headers.STREAM_ID: stored.stream_id,
        headers.STREAM_VERSION: str(stored.version),
        headers.RECORDED_AT: repr(stored.recorded_at),  # workers measure their lag by it
    }
    if stored.correlation_id is not None:
        values[headers.CORRELATION_ID] = stored.correlation_id
    if stored.causation_id is not None:
        values[headers.CAUSATION_ID] = stored.causation_id
    if stored.trace_context is not None:
        values[headers.TRACEPARENT] = stored.trace_context  # traces continue in workers
    return Message(
        stored.event_id.hex,
        topic,
        f"{stream_type}.{event_type}",
        stored.stream_id,
        payload,
        values,
    )


class OutboxRelay(ProjectionRunner):
    """Publishes the event log to ``broker``, from its checkpoint in ``read_store``.

    Args:
        store: the event store to read.
        read_store: where the relay's checkpoint and lease live.
        broker: where messages go.
        name: the relay's name (its checkpoint); relays of different names are independent.
        topic: the topic to publish to (``events``).
        partitions: spread streams over ``topic.p0 .. topic.p<N-1>`` (1: just ``topic``).
        types: only these event type names (None: every event).
        accept: a further filter on stored events (return False to skip one).
        page_size / lease_seconds / poll_interval / linger: as for a projection runner.
        tracer: an OpenTelemetry tracer: a span per published batch, linked to the traced
            commands that wrote its events.
    """

    transient: ClassVar[tuple[type[BaseException], ...]] = (StoreUnavailable, BrokerUnavailable)

    def __init__(
        self,
        store: EventStore,
        read_store: ReadStore,
        broker: Broker,
        *,
        name: str = "relay",
        topic: str = "events",
        partitions: int = 1,
        types: Iterable[str] | None = None,
        accept: Callable[[StoredEvent], bool] | None = None,
        page_size: int = 1000,
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        owner: str | None = None,
        tracer: Any = None,
        linger: float = 0.0,
    ) -> None:
        if partitions < 1:
            raise ValidationError(f"partitions must be >= 1, got {partitions}")
        validate_topic(topic)
        cls = type("OutboxRelayCheckpoint", (Projection,), {"name": f"relay:{name}"})
        super().__init__(
            cls(),
            store,
            read_store,
            page_size=page_size,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            owner=owner,
            tracer=tracer,
            linger=linger,
        )
        self.broker = broker
        self.topic = topic
        self.topic_partitions = partitions
        self.accept = accept
        self._types = None if types is None else sorted(types)
        self.published = 0
        self.duplicates = 0
        self.undecodable = 0
        self.publish_seconds = 0.0
        self._types_seen: dict[str, str | None] = {}

    def topic_of(self, stream_id: str) -> str:
        if self.topic_partitions == 1:
            return self.topic
        return f"{self.topic}.p{partition_of(stream_id, self.topic_partitions)}"

    async def _commit_batch(
        self,
        claim: Claim,
        names: dict[Table, str],
        events: Sequence[StoredEvent],
        target: int,
        letters: list[DeadLetter],
        on_caught_up: OnCaughtUp | None,
    ) -> None:
        if events:
            encode = self.store.codec.encode
            accept = self.accept
            chosen = [e for e in events if accept is None or accept(e)]
            types = await self._stream_types(chosen)
            messages = [
                message_for(
                    e, self._payload(e, encode), self.topic_of(e.stream_id), types.get(e.stream_id)
                )
                for e in chosen
            ]
            started = time.perf_counter()
            # Published before the checkpoint moves: a crash between the two republishes
            # the page, and the sequences make the broker drop the copies.
            result = await self.broker.publish(messages, sequences=[e.position for e in chosen])
            self.publish_seconds += time.perf_counter() - started
            self.published += result.new
            self.duplicates += result.duplicates
        async with self.read_store.transaction() as tx:
            await self._advance(tx, claim, target, events)
        self._after_commit(events, target, len(events), 0.0)

    def _payload(self, stored: StoredEvent, encode: Callable[[Event], bytes]) -> bytes:
        event = stored.event
        if type(event) is not UndecodableEvent:
            return encode(event)
        self.undecodable += 1
        _log.warning(
            "relay %s publishes an event it cannot decode as stored (position %d, %s): %s",
            self.name, stored.position, event.type_name, event.error,
        )  # fmt: skip
        return event.data

    async def _stream_types(self, events: Sequence[StoredEvent]) -> dict[str, str | None]:
        """The aggregate type of each stream in ``events``. Stores write it on a stream's
        first event only (no bytes on every row of the write path), so the relay remembers
        what it saw and reads a stream's first event for one it has not (after a restart)."""
        known = self._types_seen
        for stored in events:
            if stored.stream_type is not None:
                known[stored.stream_id] = stored.stream_type
        out: dict[str, str | None] = {}
        for stored in events:
            sid = stored.stream_id
            if sid in out:
                continue
            if sid not in known:
                if len(known) >= _MAX_KNOWN_TYPES:
                    known.clear()  # bounded; refilled from first events and lookups
                try:
                    first = await self.store.read_stream(sid, from_version=1, to_version=1)
                except (UnknownEventType, CorruptEvent):
                    first = []  # its first event is undecodable: the subject says "unknown"
                known[sid] = first[0].stream_type if first else None
            out[sid] = known[sid]
        return out

    def describe(self) -> dict[str, Any]:
        """Counters for status output."""
        return {
            "name": self.name,
            "position": self.position,
            "published": self.published,
            "duplicates": self.duplicates,
            "undecodable": self.undecodable,
        }
