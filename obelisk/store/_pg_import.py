"""Bulk import into the PostgreSQL store through COPY.

For migrations from other stores and for loading test data: appends are validated and
encoded like any other, their heads are locked and checked like any other, and the rows go
in with binary COPY — one transaction per chunk of at most 65,536 events, so positions
follow the import order and versions continue each stream's head with no hole. A writer
that appends to one of the streams meanwhile makes the chunk fail on the unique
(stream_id, version) index: nothing of it is written.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import msgspec

from obelisk.errors import ConcurrencyError, ObeliskError, ValidationError
from obelisk.store._pg_schema import INDEX_BITS, MAX_EVENTS_PER_TRANSACTION, AnyConnection, Names
from obelisk.store._pg_writer import translate
from obelisk.store.base import PreparedAppend, prepare_appends
from obelisk.store.codec import EventCodec
from obelisk.store.records import ANY, AppendRequest

__all__ = ["ImportStopped", "ImportResult", "import_appends"]

_COLUMNS = (
    "position", "stream_id", "version", "event_id", "event_type", "schema_version", "data",
    "recorded_at", "correlation_id", "causation_id", "stream_type", "trace_context",
)  # fmt: skip


class ImportResult(msgspec.Struct, frozen=True):
    """What an import wrote: events, appends, transactions and the last position."""

    events: int
    appends: int
    transactions: int
    last_position: int


class ImportStopped(ObeliskError):
    """An import stopped: ``committed`` says what earlier chunks had already written."""

    def __init__(self, message: str, committed: ImportResult) -> None:
        super().__init__(message)
        self.committed = committed


async def _chunks(
    requests: Iterable[AppendRequest] | AsyncIterable[AppendRequest],
    codec: EventCodec,
    limit: int,
) -> AsyncIterator[list[PreparedAppend]]:
    chunk: list[PreparedAppend] = []
    count = 0

    async def each() -> AsyncIterator[AppendRequest]:
        if isinstance(requests, AsyncIterable):
            async for request in requests:
                yield request
        else:
            for request in requests:
                yield request

    async for request in each():
        (part,) = prepare_appends([request], codec)
        if len(part.events) > limit:
            raise ValidationError(
                f"append to {part.stream_id!r} holds {len(part.events)} events; one import "
                f"append holds at most {limit}"
            )
        if count + len(part.events) > limit:
            yield chunk
            chunk, count = [], 0
        chunk.append(part)
        count += len(part.events)
    if chunk:
        yield chunk


async def import_appends(
    conn: AnyConnection,
    names: Names,
    offset: int,
    codec: EventCodec,
    requests: Iterable[AppendRequest] | AsyncIterable[AppendRequest],
    *,
    chunk_events: int = MAX_EVENTS_PER_TRANSACTION,
) -> ImportResult:
    """Write ``requests`` in order, one COPY transaction per chunk; see the module notes.

    Each request's ``expected_version`` is checked against its stream's head as earlier
    requests of the import left it. A failed check, or any other error, rolls back the
    chunk at hand and raises ImportStopped carrying what earlier chunks committed.
    """
    limit = min(chunk_events, MAX_EVENTS_PER_TRANSACTION)
    if limit < 1:
        raise ValidationError(f"chunk_events must be >= 1, got {chunk_events!r}")
    done = ImportResult(0, 0, 0, 0)
    try:
        async for chunk in _chunks(requests, codec, limit):
            last = await _import_chunk(conn, names, offset, chunk)
            done = ImportResult(
                done.events + sum(len(part.events) for part in chunk),
                done.appends + len(chunk),
                done.transactions + 1,
                last,
            )
    except ObeliskError as exc:
        raise ImportStopped(f"import stopped: {exc}", done) from exc
    except Exception as exc:
        raise ImportStopped(f"import stopped: {translate(exc, 'importing')}", done) from exc
    return done


async def _import_chunk(
    conn: AnyConnection, names: Names, offset: int, chunk: list[PreparedAppend]
) -> int:
    streams = sorted({part.stream_id for part in chunk})
    async with conn.transaction():
        rows = await conn.fetch(
            f"SELECT stream_id, max(version) FROM {names.events} "
            "WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
            streams,
        )
        heads: dict[str, int] = {stream: 0 for stream in streams}
        heads.update((row[0], row[1]) for row in rows)
        xid: int = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
        base = (xid + offset) << INDEX_BITS
        now = time.time()
        records: list[tuple[Any, ...]] = []
        for part in chunk:
            version = heads[part.stream_id]
            expected = part.expected_version
            if expected != ANY and expected != version:
                raise ConcurrencyError(part.stream_id, expected, version)
            for event in part.events:
                version += 1
                records.append(
                    (base + len(records), part.stream_id, version, event.event_id,
                     event.type_name, event.schema_version, event.data, now,
                     part.correlation_id, part.causation_id,
                     part.stream_type if version == 1 else None, part.trace_context)
                )  # fmt: skip
            heads[part.stream_id] = version
        await conn.copy_records_to_table(
            f"{names.prefix}events",
            schema_name=names.schema_name,
            columns=_COLUMNS,
            records=records,
        )
        return base + len(records) - 1
