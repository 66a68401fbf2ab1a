"""Checks on the arguments of the EventStore port, shared by every adapter.

Each check is cheap (a type test and a compare) and turns what a driver would reject with
its own exception (an OverflowError for an int past 64 bits, a UnicodeEncodeError for a
lone surrogate) into a :class:`~obelisk.errors.ValidationError` before any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final
from uuid import UUID

from obelisk._arguments import check_int
from obelisk.domain.values import shown
from obelisk.errors import ValidationError
from obelisk.store.records import Snapshot, validate_stream_id

__all__ = [
    "check_int64",
    "check_limit",
    "check_position",
    "check_stream_after",
    "check_types",
    "check_versions",
    "event_id_bytes",
    "validate_snapshot",
    "validate_snapshots",
]

_INT64_MAX: Final = 2**63 - 1


def check_limit(limit: int | None) -> None:
    """Refuse a negative read limit (backends would disagree on what it means), or one
    beyond what a database integer holds."""
    if limit is not None and (type(limit) is not int or not 0 <= limit <= _INT64_MAX):
        raise ValidationError(f"limit must be an int from 0 to 2**63-1, got {shown(limit)}")


def check_int64(name: str, value: object) -> int:
    """``value`` if it is an int a database integer holds (positions, versions), else
    ValidationError: drivers would raise OverflowError or their own errors."""
    if type(value) is not int or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        return check_int(name, value)  # raises, naming the rule
    return value


def check_versions(from_version: object, to_version: object) -> None:
    """A stream read's bounds, checked like :func:`check_int64` (defaults cost one compare)."""
    if type(from_version) is not int or from_version != 1:
        check_int64("from_version", from_version)
    if to_version is not None:
        check_int64("to_version", to_version)


def check_position(after: object) -> int:
    """A read's ``after`` position, checked like :func:`check_int64`."""
    return check_int64("after", after)


def check_types(types: Iterable[str]) -> list[str]:
    """Event type names to filter a read by: each a printable str (as every type name is)."""
    if isinstance(types, str | bytes):
        raise ValidationError(f"types must be a collection of type names, got {shown(types)}")
    try:
        names = list(types)
    except TypeError:
        message = f"types must be a collection of type names, got {shown(types)}"
        raise ValidationError(message) from None
    for name in names:
        if not isinstance(name, str) or not name.isprintable():
            raise ValidationError(f"types holds {shown(name)}, which is no event type name")
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
        message = f"after {shown(after)} is not valid text (a lone surrogate)"
        raise ValidationError(message) from None
    if "\x00" in after:
        raise ValidationError("after must not hold NUL characters")
    return after


def validate_snapshot(snapshot: object) -> Snapshot:
    """Return ``snapshot`` if every field is sound, else raise ValidationError saying why."""
    if not isinstance(snapshot, Snapshot):
        raise ValidationError(f"expected a Snapshot, got {type(snapshot).__name__}")
    validate_stream_id(snapshot.stream_id)
    if type(snapshot.version) is not int or not 1 <= snapshot.version <= _INT64_MAX:
        raise ValidationError(
            f"a snapshot's version must be an int >= 1, got {shown(snapshot.version)}"
        )
    kind = snapshot.aggregate_type
    if not isinstance(kind, str) or not kind or not kind.isprintable() or len(kind) > 1024:
        raise ValidationError(f"a snapshot needs its aggregate type (printable), got {shown(kind)}")
    if type(snapshot.schema_version) is not int or abs(snapshot.schema_version) > _INT64_MAX:
        raise ValidationError(
            f"a snapshot's schema version must be an int, got {shown(snapshot.schema_version)}"
        )
    if not isinstance(snapshot.state, bytes):
        raise ValidationError(
            f"a snapshot's state must be bytes, got {type(snapshot.state).__name__}"
        )
    taken_at = snapshot.taken_at
    if type(taken_at) not in (int, float) or not abs(taken_at) < 1e15:  # NaN fails this too
        raise ValidationError(f"a snapshot's taken_at must be seconds, got {shown(taken_at)}")
    return snapshot


def validate_snapshots(snapshots: object) -> Sequence[Snapshot]:
    """Every snapshot of ``snapshots`` checked (all first: a refused call saves nothing)."""
    if not isinstance(snapshots, Sequence) or isinstance(snapshots, str | bytes):
        raise ValidationError(f"expected a sequence of Snapshots, got {shown(snapshots)}")
    for snapshot in snapshots:
        validate_snapshot(snapshot)
    return snapshots


def event_id_bytes(event_ids: object) -> list[bytes]:
    """The 16 bytes of each UUID in ``event_ids``, else ValidationError."""
    if not isinstance(event_ids, Sequence) or isinstance(event_ids, str | bytes):
        raise ValidationError(f"event_ids must be a sequence of UUIDs, got {shown(event_ids)}")
    out = []
    for value in event_ids:
        if not isinstance(value, UUID):
            raise ValidationError(f"event ids must be UUIDs, got {type(value).__name__}")
        out.append(value.bytes)
    return out
