"""Rows to events, shared by the SQL adapters: the fast path and its careful fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from obelisk.domain.events import Event, UndecodableEvent
from obelisk.errors import CorruptEvent, UnknownEventType
from obelisk.store.codec import EventCodec, split_type_key
from obelisk.store.records import StoredEvent

__all__ = [
    "decode_envelopes",
    "decode_payloads",
    "decode_rest",
    "undecodable",
]


def decode_envelopes(
    codec: EventCodec, rows: Sequence[Sequence[Any]], keep_undecodable: bool = False
) -> list[StoredEvent]:
    """StoredEvents from rows of (position, stream_id, version, event_id bytes, type key,
    data, recorded_at, correlation_id, causation_id, trace_context, stream_type).

    The common row (a known type at its current schema) goes straight to its struct; any
    other row goes through ``codec.decode``, which upcasts, or raises UnknownEventType /
    CorruptEvent naming stream, version and position; with ``keep_undecodable`` such a row
    comes back as an :class:`UndecodableEvent` holding its raw payload and the error.
    """
    fast = codec.fast_decoders
    out: list[StoredEvent] = []
    append = out.append
    for pos, sid, ver, eid, key, data, at, corr, caus, trace, stype in rows:
        decoder = fast.get(key) or codec.fast_decoder(key)
        event = None
        if decoder is not None:
            try:
                event = decoder.decode(data)
            except Exception:
                event = None  # decode() below raises CorruptEvent naming the row
        if event is None:
            try:
                type_name, schema_version = _split(key, sid, ver, pos)
                event = codec.decode(type_name, schema_version, data, sid, ver, pos)
            except (UnknownEventType, CorruptEvent) as exc:
                if not keep_undecodable:
                    raise
                type_name, _, rest = str(key).partition("\x1f")
                schema_version = int(rest) if rest.isdigit() else 0
                event = undecodable(type_name, schema_version, data, exc)
        append(StoredEvent(pos, sid, ver, event, eid, at, corr, caus, trace, stype))
    return out


def _split(key: Any, stream_id: str, version: int, position: int) -> tuple[str, int]:
    try:
        return split_type_key(key)
    except (ValueError, AttributeError):  # a key no store wrote: another writer's row
        raise CorruptEvent(f"malformed type key {key!r}", stream_id, version, position) from None


def decode_payloads(codec: EventCodec, rows: Sequence[Sequence[Any]]) -> list[Event]:
    """Events from rows of (type key, data, ...), stopping at the first uncommon row.

    The caller reads the rest again with the columns ``codec.decode`` needs to upcast or
    to name the row in its error: ``len(result) < len(rows)`` says that it must.
    """
    fast = codec.fast_decoders
    out: list[Event] = []
    append = out.append
    try:
        for row in rows:
            key = row[0]
            decoder = fast.get(key) or codec.fast_decoder(key)
            if decoder is None:
                break
            append(decoder.decode(row[1]))
    except Exception:
        pass  # a corrupt payload: the slow path raises the named error
    return out


def decode_rest(
    codec: EventCodec, stream_id: str, rows: Sequence[Sequence[Any]], out: list[Event]
) -> None:
    """Append to ``out`` the events of rows of (position, version, type name, schema version,
    data): the careful path after :func:`decode_payloads` stopped, which upcasts, or raises
    UnknownEventType / CorruptEvent naming stream, version and position."""
    decode = codec.decode
    for position, version, type_name, schema_version, data in rows:
        out.append(decode(type_name, schema_version, data, stream_id, version, position))


def undecodable(
    type_name: str, schema_version: int, data: Any, error: UnknownEventType | CorruptEvent
) -> UndecodableEvent:
    """The placeholder of a row that cannot be decoded (``error`` says why)."""
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):  # another writer put text in the column
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = b"" if data is None else bytes(data)
    return UndecodableEvent(
        type_name=type_name,
        stored_schema_version=schema_version,
        data=raw,
        error=error.reason,
        unknown_type=isinstance(error, UnknownEventType),
    )
