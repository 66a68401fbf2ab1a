"""Append requests validated and encoded: what every adapter writes.

:func:`prepare_appends` is the one door events pass on their way to any store, so the
checks that keep a store from holding a row it cannot give back live here: the event's
values read back as written (:meth:`~obelisk.store.codec.EventCodec.encode_checked`), and
the envelope's text is text a database can hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID

import msgspec

from obelisk.domain.events import Event, UndecodableEvent
from obelisk.domain.values import shown
from obelisk.errors import ValidationError
from obelisk.store.codec import EventCodec
from obelisk.store.records import (
    ANY,
    AppendRequest,
    new_event_id,
    validate_stream_id,
)

__all__ = ["MAX_METADATA_LENGTH", "EncodedEvent", "PreparedAppend", "prepare_appends"]

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
    if not _is_sequence(requests):
        raise ValidationError(f"append_many takes a sequence of requests, got {shown(requests)}")
    if not requests:
        raise ValidationError("an append needs at least one stream")
    seen: set[str] = set()
    seen_ids: set[bytes] = set()
    prepared: list[PreparedAppend] = []
    for request in requests:
        if not isinstance(request, AppendRequest):
            raise ValidationError(f"expected an AppendRequest, got {type(request).__name__}")
        stream_id = validate_stream_id(request.stream_id)
        if stream_id in seen:
            raise ValidationError(f"stream {stream_id!r} appears twice in one append")
        seen.add(stream_id)
        expected = request.expected_version
        if type(expected) is not int or not ANY <= expected <= _INT64_MAX:
            raise ValidationError(
                f"expected_version must be NO_STREAM, ANY or a version >= 1, got {shown(expected)}"
            )
        events = request.events
        kind = type(events)
        if kind is not list and kind is not tuple and not _is_sequence(events):
            raise ValidationError(
                f"append to {stream_id!r}: events must be a sequence of events, "
                f"got {type(events).__name__}"
            )
        if not events:
            raise ValidationError(f"append to {stream_id!r} has no events")
        stream_type = request.stream_type
        if not (
            (
                stream_type is None
                or (type(stream_type) is str and stream_type in _CHECKED_STREAM_TYPES)
            )
            and request.correlation_id is None
            and request.causation_id is None
            and request.trace_context is None
        ):
            _check_metadata(request)
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


MAX_METADATA_LENGTH: Final = 1024
_INT64_MAX: Final = 2**63 - 1


def _is_sequence(value: object) -> bool:
    """A list or tuple (at a type test's cost), or another sequence but text."""
    kind = type(value)
    if kind is list or kind is tuple:
        return True
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


# Stream types already checked: an application has a handful (its aggregate types) and
# names one on every append, so each is looked at once. Bounded: a store fed arbitrary
# types checks them every time instead.
_CHECKED_STREAM_TYPES: set[str] = set()
_MAX_CHECKED_STREAM_TYPES: Final = 1024


def _check_metadata(request: AppendRequest) -> None:
    """Refuse envelope text a database cannot hold (NUL, lone surrogates) or should not
    repeat on every event (longer than MAX_METADATA_LENGTH)."""
    for name in ("stream_type", "correlation_id", "causation_id", "trace_context"):
        value = getattr(request, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValidationError(f"{name} must be a str or None, got {type(value).__name__}")
        if len(value) > MAX_METADATA_LENGTH or not value.isprintable():
            raise ValidationError(
                f"{name} must be printable text of at most {MAX_METADATA_LENGTH} characters, "
                f"got {value[:40]!r}{'...' if len(value) > 40 else ''}"
            )
    stream_type = request.stream_type
    if stream_type is not None and len(_CHECKED_STREAM_TYPES) < _MAX_CHECKED_STREAM_TYPES:
        _CHECKED_STREAM_TYPES.add(stream_type)


def _event_ids(given: Sequence[UUID] | None, count: int, stream_id: str) -> list[bytes]:
    if given is None:
        return [new_event_id() for _ in range(count)]
    if not _is_sequence(given):
        raise ValidationError(f"event_ids must be a sequence of UUIDs, got {type(given).__name__}")
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
