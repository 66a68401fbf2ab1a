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
from typing import Any, Literal, Self
from uuid import UUID

from obelisk.domain.events import Event
from obelisk.store._envelopes import decode_payloads
from obelisk.store.codec import EventCodec
from obelisk.store.inputs import (
    check_int64,
    check_limit,
    check_position,
    check_stream_after,
    check_types,
    check_versions,
    event_id_bytes,
    validate_snapshot,
    validate_snapshots,
)
from obelisk.store.prepared import EncodedEvent, PreparedAppend, prepare_appends
from obelisk.store.records import (
    ANY,
    AppendRequest,
    AppendResult,
    Snapshot,
    StoredEvent,
    StreamInfo,
    StreamSize,
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
    "event_id_bytes",
    "prepare_appends",
    "validate_snapshot",
    "validate_snapshots",
]


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
