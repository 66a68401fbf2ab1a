"""Checks on the arguments of the EventStore port, shared by every adapter.

Each check is cheap (a type test and a compare) and turns what a driver would reject with
its own exception (an OverflowError for an int past 64 bits, a UnicodeEncodeError for a
lone surrogate) into a :class:`~obelisk.errors.ValidationError` before any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from obelisk.errors import ValidationError
from obelisk.store.records import Snapshot, validate_stream_id

__all__ = [
    "check_int64",
    "check_limit",
    "check_position",
    "check_stream_after",
    "check_types",
    "check_versions",
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
