"""The EventStore port: what every event store adapter provides.

Vocabulary: ``append`` / ``append_many`` write, ``read_stream`` / ``read_all`` read.
Versions count events per stream from 1; positions order every event of the store
globally, gap-free and in commit order.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Self
from uuid import UUID

import msgspec

from obelisk.domain.events import Event, UndecodableEvent
from obelisk.errors import ValidationError
from obelisk.store._envelopes import decode_payloads
from obelisk.store.codec import EventCodec
from obelisk.store.records import (
    ANY,
    AppendRequest,
    AppendResult,
    Snapshot,
    StoredEvent,
    StreamInfo,
    StreamSize,
    new_event_id,
    validate_stream_id,
)
from obelisk.store.subscription import Subscription, WakeChannel

__all__ = [
    "EncodedEvent",
    "EventStore",
    "PreparedAppend",
    "check_int64",
    "check_limit",
    "check_position",
    "check_stream_after",
    "check_types",
    "check_versions",
    "prepare_appends",
    "validate_snapshot",
]


_INT64_MAX: Final = 2**63 - 1


def check_limit(limit: int | None) -> None:
    """Refuse a negative read limit (backends would disagree on what it means), or one
    beyond what a database integer holds."""
    if limit is not None and (type(limit) is not int or not 0 <= limit <= _INT64_MAX):
        raise ValidationError(f"limit must be an int from 0 to 2**63-1, got {limit!r}")


def check_int64(name: str, value: object) -> int:
    """``value`` if it is an int a database integer holds (positions, versions), else
    ValidationError: drivers would raise OverflowError or their own errors."""
    if type(value) is not int or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValidationError(f"{name} must be an int from -2**63 to 2**63-1, got {value!r}")
    return value


def check_versions(from_version: object, to_version: object) -> None:
    """A stream read's bounds, checked like :func:`check_int64` (defaults cost one compare)."""
    if from_version != 1:
        check_int64("from_version", from_version)
    if to_version is not None:
        check_int64("to_version", to_version)


def check_position(after: object) -> int:
    """A read's ``after`` position, checked like :func:`check_int64`."""
    return check_int64("after", after)


def check_types(types: Iterable[str]) -> list[str]:
    """Event type names to filter a read by: each a printable str (as every type name is)."""
    if isinstance(types, str | bytes):
        raise ValidationError(f"types must be a collection of type names, got {types!r}")
    try:
        names = list(types)
    except TypeError:
        raise ValidationError(f"types must be a collection of type names, got {types!r}") from None
    for name in names:
        if not isinstance(name, str) or not name.isprintable():
            raise ValidationError(f"types holds {name!r}, which is no event type name")
    return names


def check_stream_after(after: object) -> str | None:
    """``list_streams``'s ``after``: None or a str a database can hold (no lone surrogates)."""
    if after is None:
        return None
    if not isinstance(after, str):
        raise ValidationError(f"after must be a stream id or None, got {type(after).__name__}")
    try:
        after.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"after {after!r} is not valid text (a lone surrogate)") from None
    if "\x00" in after:
        raise ValidationError("after must not hold NUL characters")
    return after


def validate_snapshot(snapshot: object) -> Snapshot:
    """Return ``snapshot`` if every field is sound, else raise ValidationError saying why."""
    if not isinstance(snapshot, Snapshot):
        raise ValidationError(f"expected a Snapshot, got {type(snapshot).__name__}")
    validate_stream_id(snapshot.stream_id)
    if type(snapshot.version) is not int or snapshot.version < 1:
        raise ValidationError(f"a snapshot's version must be an int >= 1, got {snapshot.version!r}")
    if not isinstance(snapshot.aggregate_type, str) or not snapshot.aggregate_type:
        raise ValidationError("a snapshot needs its aggregate type")
    if type(snapshot.schema_version) is not int:
        raise ValidationError(
            f"a snapshot's schema version must be an int, got {snapshot.schema_version!r}"
        )
    if not isinstance(snapshot.state, bytes):
        raise ValidationError(
            f"a snapshot's state must be bytes, got {type(snapshot.state).__name__}"
        )
    return snapshot


class EncodedEvent(msgspec.Struct, gc=False):
    """One event ready to be written: id, type, schema version and payload bytes."""

    event_id: bytes
    type_name: str
    schema_version: int
    data: bytes


class PreparedAppend(msgspec.Struct):
    """An AppendRequest validated and encoded, as adapters consume it."""

    stream_id: str
    expected_version: int
    stream_type: str | None
    events: list[EncodedEvent]
    correlation_id: str | None
    causation_id: str | None
    ids_given: bool
    trace_context: str | None = None


def prepare_appends(requests: Sequence[AppendRequest], codec: EventCodec) -> list[PreparedAppend]:
    """Validate and encode ``requests``; raise ValidationError before anything is written."""
    if not requests:
        raise ValidationError("an append needs at least one stream")
    seen: set[str] = set()
    seen_ids: set[bytes] = set()
    prepared: list[PreparedAppend] = []
    for request in requests:
        stream_id = validate_stream_id(request.stream_id)
        if stream_id in seen:
            raise ValidationError(f"stream {stream_id!r} appears twice in one append")
        seen.add(stream_id)
        expected = request.expected_version
        if type(expected) is not int or expected < ANY:
            raise ValidationError(
                f"expected_version must be NO_STREAM, ANY or a version >= 1, got {expected!r}"
            )
        events = request.events
        if not events:
            raise ValidationError(f"append to {stream_id!r} has no events")
        ids = _event_ids(request.event_ids, len(events), stream_id)
        if request.event_ids is not None:
            if not seen_ids.isdisjoint(ids):
                raise ValidationError(
                    f"append to {stream_id!r} reuses an event id of another part of this append"
                )
            seen_ids.update(ids)
        encoded = []
        encode = codec.encode_checked
        for index, event in enumerate(events):
            if not isinstance(event, Event) or isinstance(event, UndecodableEvent):
                raise ValidationError(
                    f"append to {stream_id!r}: {type(event).__name__} is not an obelisk Event"
                    " that can be stored"
                )
            cls = type(event)
            # Checked before written: a value that would not read back is refused here,
            # before any store holds a row it cannot give back.
            data = encode(event)
            encoded.append(EncodedEvent(ids[index], cls.event_type, cls.schema_version, data))
        prepared.append(
            PreparedAppend(
                stream_id,
                expected,
                request.stream_type,
                encoded,
                request.correlation_id,
                request.causation_id,
                request.event_ids is not None,
                request.trace_context,
            )
        )
    return prepared


def _event_ids(given: Sequence[UUID] | None, count: int, stream_id: str) -> list[bytes]:
    if given is None:
        return [new_event_id() for _ in range(count)]
    if len(given) != count:
        raise ValidationError(
            f"append to {stream_id!r} has {count} events but {len(given)} event ids"
        )
    ids = []
    for value in given:
        if not isinstance(value, UUID):
            raise ValidationError(f"event ids must be UUIDs, got {type(value).__name__}")
        ids.append(value.bytes)
    if len(set(ids)) != len(ids):
        raise ValidationError(f"append to {stream_id!r} repeats an event id")
    return ids


class EventStore(abc.ABC):
    """An append-only store of event streams with a global, gap-free order.

    Adapters are async context managers: ``async with store:`` opens and closes them.
    """

    codec: EventCodec
    _wakers: set[Callable[[], None]] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook, most adapters need it
        """Make the store ready (create the schema, start workers). Idempotent."""

    async def close(self) -> None:  # noqa: B027
        """Finish every queued append, then release resources. Idempotent."""

    def terminate(self) -> None:  # noqa: B027
        """Release resources now; queued appends fail with StoreClosed."""

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

    # -- writing -------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int = ANY,
        *,
        stream_type: str | None = None,
        event_ids: Sequence[UUID] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> AppendResult:
        """Append ``events`` to one stream at ``expected_version``; else ConcurrencyError."""
        request = AppendRequest(
            stream_id,
            events,
            expected_version,
            stream_type,
            event_ids,
            correlation_id,
            causation_id,
        )
        return (await self.append_many([request]))[0]

    @abc.abstractmethod
    def append_many(self, requests: Sequence[AppendRequest]) -> Awaitable[list[AppendResult]]:
        """Append to several streams atomically: all parts are written, or none is.

        Implementations may be ``async def`` or return a future: a future lets a caller
        that is cancelled while waiting keep track of an append that may still commit.
        """

    def when_settled(self, append: Awaitable[object], callback: Callable[[], None]) -> bool:
        """Call ``callback`` once an append whose caller was cancelled has settled.

        ``append`` is what :meth:`append_many` returned. Returns False when the store has
        nothing in flight for it (it settled already, or the store cannot tell): the caller
        then treats it as settled now.
        """
        return False

    # -- reading -------------------------------------------------------------------------

    @abc.abstractmethod
    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Events of one stream with versions in [from_version, to_version], oldest first."""

    @abc.abstractmethod
    async def read_stream_events(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[Event]:
        """Like read_stream, without envelopes: the fast path for loading aggregates."""

    @abc.abstractmethod
    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Iterable[str] | None = None,
        keep_undecodable: bool = False,
    ) -> list[StoredEvent]:
        """Up to ``limit`` events with positions > ``after`` in commit order.

        ``types`` keeps only events whose type name is listed. A reader never sees
        position n+1 before it can see n. A row that cannot be decoded (an unknown type, a
        corrupt payload) raises UnknownEventType / CorruptEvent, or with
        ``keep_undecodable`` comes back as an :class:`UndecodableEvent` in its place, so a
        follower can dead-letter it and go on.
        """

    @abc.abstractmethod
    async def last_position_of(self, event_ids: Sequence[UUID]) -> int | None:
        """The highest position among stored events whose id is in ``event_ids`` (None
        when none is stored): how an idempotent command learns that it ran before."""

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The highest committed position (0 for an empty store)."""

    @abc.abstractmethod
    async def stream_version(self, stream_id: str) -> int:
        """The current version of a stream (0 when it does not exist)."""

    @abc.abstractmethod
    async def list_streams(self, *, after: str | None = None, limit: int = 100) -> list[StreamInfo]:
        """Streams ordered by id, after the id ``after``: for tools, not for hot paths."""

    # -- snapshots -----------------------------------------------------------------------

    @abc.abstractmethod
    async def save_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        """Store snapshots, one per stream: a newer version replaces an older one, never
        the other way round (two processes may snapshot the same stream at once).

        Snapshots are a cache of state the events already hold: stores may write them
        without waiting for them to be durable.
        """

    @abc.abstractmethod
    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stored snapshot of ``stream_id``, or None."""

    async def load_from_snapshot(self, stream_id: str) -> tuple[Snapshot | None, list[Event]]:
        """What loading an aggregate reads: its snapshot (or None), and its events from the
        snapshot's own version on (from 1 without one). The events are empty when the
        snapshot is past the stream's head. Stores may do it in one round trip.
        """
        rows = await self._snapshot_rows(stream_id)
        if rows is None:  # no one-query path: the snapshot, then the events
            snapshot = await self.load_snapshot(stream_id)
            from_version = 1 if snapshot is None else snapshot.version
            return snapshot, await self.read_stream_events(stream_id, from_version=from_version)
        if not rows:
            # No stream, or a snapshot past its head: only then a second look.
            return await self.load_snapshot(stream_id), []
        first = rows[0]
        snapshot = None if first[2] is None else Snapshot(stream_id, *first[2:])
        from_version = 1 if snapshot is None else snapshot.version
        out = decode_payloads(self.codec, rows)
        if len(out) < len(rows):
            # An uncommon row (to upcast, or corrupt): the careful read takes it from there.
            out.extend(
                await self.read_stream_events(stream_id, from_version=from_version + len(out))
            )
        return snapshot, out

    async def _snapshot_rows(self, stream_id: str) -> Sequence[Sequence[Any]] | None:
        """One query for :meth:`load_from_snapshot`, or None when the store has none.

        Rows of (type key, data, then the snapshot's version, aggregate type, schema
        version, state and taken_at on the row of the snapshot's own version, else NULLs),
        from the snapshot's version on (from 1 without one), in version order.
        """
        return None

    @abc.abstractmethod
    async def delete_snapshot(self, stream_id: str, version: int) -> None:
        """Remove the snapshot of ``stream_id`` if it is still the one at ``version``."""

    @abc.abstractmethod
    async def stream_sizes(self, *, limit: int = 20) -> list[StreamSize]:
        """The ``limit`` largest streams by event count, largest first: for tools.

        Reads every event row once (a full scan): not for hot paths.
        """

    # -- following -----------------------------------------------------------------------

    def subscribe(
        self,
        *,
        after: int = 0,
        types: Iterable[str] | None = None,
        page_size: int = 1000,
        poll_interval: float = 1.0,
        undecodable: Literal["stop", "yield"] = "stop",
    ) -> Subscription:
        """Follow the log after ``after``: catch up in pages, then wait for new commits.

        Commits made through this store object wake the subscription at once; commits by
        other processes are seen through the store's wake channel (PostgreSQL: LISTEN) or
        within ``poll_interval``. An event that cannot be decoded stops the subscription
        with its error (``"stop"``) or is handed out as an UndecodableEvent (``"yield"``).
        """
        return Subscription(
            self,
            after=after,
            types=types,
            page_size=page_size,
            poll_interval=poll_interval,
            undecodable=undecodable,
        )

    def _wake_channel(self, wake: Callable[[], None]) -> WakeChannel | None:
        """A channel that calls ``wake`` on other processes' commits (None: poll only)."""
        return None

    def _add_waker(self, wake: asyncio.Event) -> None:
        if self._wakers is None:
            self._wakers = set()
        self._wakers.add(wake.set)

    def _remove_waker(self, wake: asyncio.Event) -> None:
        if self._wakers is not None:
            self._wakers.discard(wake.set)

    def _notify_local(self) -> None:
        """Wake this store's subscriptions: something committed."""
        if self._wakers:
            for wake in list(self._wakers):
                wake()
