"""An in-memory EventStore for users' unit tests.

Payloads are encoded and decoded exactly as in a real store, so a test that passes here
does not hide an event that cannot be serialised.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from obelisk.domain.events import Event
from obelisk.errors import ConcurrencyError, CorruptEvent, StoreClosed, UnknownEventType
from obelisk.store._envelopes import undecodable
from obelisk.store._idempotency import replayed_result
from obelisk.store.base import (
    EncodedEvent,
    EventStore,
    PreparedAppend,
    check_int64,
    check_limit,
    check_position,
    check_stream_after,
    check_types,
    check_versions,
    event_id_bytes,
    prepare_appends,
    validate_snapshots,
)
from obelisk.store.codec import EventCodec, JsonCodec
from obelisk.store.records import (
    ANY,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    Snapshot,
    StoredEvent,
    StreamInfo,
    StreamSize,
    validate_stream_id,
)

__all__ = ["MemoryEventStore"]


@dataclass(slots=True)
class _Row:
    position: int
    stream_id: str
    version: int
    encoded: EncodedEvent
    recorded_at: float
    correlation_id: str | None
    causation_id: str | None
    trace_context: str | None


@dataclass(slots=True)
class _Stream:
    stream_type: str | None
    rows: list[_Row] = field(default_factory=list)


class MemoryEventStore(EventStore):
    """Keeps every event in process memory; lost when the process ends."""

    def __init__(self, codec: EventCodec | None = None) -> None:
        self.codec = codec if codec is not None else JsonCodec()
        self._log: list[_Row] = []
        self._streams: dict[str, _Stream] = {}
        self._ids: dict[bytes, _Row] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._closed = False

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    def terminate(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the memory store is closed")

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        self._check_open()
        prepared = prepare_appends(requests, self.codec)
        # No await between the checks and the writes: the event loop cannot interleave
        # another append, so checking everything first makes the whole call atomic.
        results: list[AppendResult | None] = [self._replayed(part) for part in prepared]
        for part, replay in zip(prepared, results, strict=True):
            if replay is None:
                self._check_version(part)
        now = time.time()
        for index, part in enumerate(prepared):
            if results[index] is None:
                results[index] = self._write(part, now)
        self._notify_local()
        return [result for result in results if result is not None]

    def _replayed(self, part: PreparedAppend) -> AppendResult | None:
        if not part.ids_given:
            return None
        found = []
        for encoded in part.events:
            row = self._ids.get(encoded.event_id)
            found.append(None if row is None else (row.stream_id, row.version, row.position))
        if all(item is None for item in found):
            return None
        # Any stored id makes this a retry or a conflict, never a fresh write: a unique
        # index would refuse the duplicate id in a database store.
        return replayed_result(part.stream_id, found)

    def _check_version(self, part: PreparedAppend) -> None:
        stream = self._streams.get(part.stream_id)
        current = len(stream.rows) if stream is not None else NO_STREAM
        if part.expected_version != ANY and part.expected_version != current:
            raise ConcurrencyError(part.stream_id, part.expected_version, current)

    def _write(self, part: PreparedAppend, now: float) -> AppendResult:
        stream = self._streams.get(part.stream_id)
        if stream is None:
            stream = self._streams[part.stream_id] = _Stream(part.stream_type)
        first_position = len(self._log) + 1
        for encoded in part.events:
            row = _Row(
                len(self._log) + 1,
                part.stream_id,
                len(stream.rows) + 1,
                encoded,
                now,
                part.correlation_id,
                part.causation_id,
                part.trace_context,
            )
            self._log.append(row)
            stream.rows.append(row)
            self._ids[encoded.event_id] = row
        return AppendResult(part.stream_id, len(stream.rows), first_position, len(self._log))

    def _decode(self, row: _Row) -> Event:
        encoded = row.encoded
        return self.codec.decode(
            encoded.type_name,
            encoded.schema_version,
            encoded.data,
            row.stream_id,
            row.version,
            row.position,
        )

    def _envelope(self, row: _Row, keep_undecodable: bool = False) -> StoredEvent:
        try:
            event = self._decode(row)
        except (UnknownEventType, CorruptEvent) as exc:
            if not keep_undecodable:
                raise
            encoded = row.encoded
            event = undecodable(encoded.type_name, encoded.schema_version, encoded.data, exc)
        return StoredEvent(
            row.position,
            row.stream_id,
            row.version,
            event,
            row.encoded.event_id,
            row.recorded_at,
            row.correlation_id,
            row.causation_id,
            row.trace_context,
            self._streams[row.stream_id].stream_type,
        )

    def _slice(
        self, stream_id: str, from_version: int, to_version: int | None, limit: int | None
    ) -> list[_Row]:
        validate_stream_id(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return []
        start = max(from_version, 1) - 1
        stop = len(stream.rows) if to_version is None else min(to_version, len(stream.rows))
        if limit is not None:
            stop = min(stop, start + max(limit, 0))
        return stream.rows[start:stop]

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        check_versions(from_version, to_version)
        self._check_open()
        check_limit(limit)
        rows = self._slice(stream_id, from_version, to_version, limit)
        return [self._envelope(row) for row in rows]

    async def read_stream_events(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[Event]:
        check_versions(from_version, to_version)
        self._check_open()
        return [self._decode(row) for row in self._slice(stream_id, from_version, to_version, None)]

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Iterable[str] | None = None,
        keep_undecodable: bool = False,
    ) -> list[StoredEvent]:
        self._check_open()
        check_limit(limit)
        check_position(after)
        wanted = None if types is None else frozenset(check_types(types))
        out: list[StoredEvent] = []
        for row in self._log[max(after, 0) :]:  # a negative after reads from the start
            if len(out) >= limit:
                break
            if wanted is None or row.encoded.type_name in wanted:
                out.append(self._envelope(row, keep_undecodable))
        return out

    async def last_position_of(self, event_ids: Sequence[UUID]) -> int | None:
        ids = event_id_bytes(event_ids)
        found = [row.position for i in ids if (row := self._ids.get(i)) is not None]
        return max(found) if found else None

    async def last_position(self) -> int:
        self._check_open()
        return len(self._log)

    async def stream_version(self, stream_id: str) -> int:
        self._check_open()
        stream = self._streams.get(validate_stream_id(stream_id))
        return 0 if stream is None else len(stream.rows)

    async def list_streams(self, *, after: str | None = None, limit: int = 100) -> list[StreamInfo]:
        self._check_open()
        check_limit(limit)
        after = check_stream_after(after)
        ids = sorted(sid for sid in self._streams if after is None or sid > after)[:limit]
        return [
            StreamInfo(sid, self._streams[sid].stream_type, len(self._streams[sid].rows),
                       len(self._streams[sid].rows))
            for sid in ids
        ]

    # -- snapshots -----------------------------------------------------------------------

    async def save_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        self._check_open()
        validate_snapshots(snapshots)  # all first: a refused call saves nothing
        for snapshot in snapshots:
            held = self._snapshots.get(snapshot.stream_id)
            if held is None or held.version <= snapshot.version:
                self._snapshots[snapshot.stream_id] = snapshot

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        self._check_open()
        return self._snapshots.get(validate_stream_id(stream_id))

    async def delete_snapshot(self, stream_id: str, version: int) -> None:
        self._check_open()
        held = self._snapshots.get(validate_stream_id(stream_id))
        check_int64("version", version)
        if held is not None and held.version == version:
            del self._snapshots[stream_id]

    async def stream_sizes(self, *, limit: int = 20) -> list[StreamSize]:
        self._check_open()
        check_limit(limit)
        largest = sorted(self._streams.items(), key=lambda item: -len(item[1].rows))[:limit]
        out = []
        for stream_id, stream in largest:
            snapshot = self._snapshots.get(stream_id)
            out.append(
                StreamSize(
                    stream_id,
                    stream.stream_type,
                    len(stream.rows),
                    sum(len(row.encoded.data) for row in stream.rows),
                    None if snapshot is None else snapshot.version,
                )
            )
        return out
