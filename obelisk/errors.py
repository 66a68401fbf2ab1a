"""obelisk's exception hierarchy.

Users catch these, never a driver's own exceptions: every adapter translates at its
boundary (``raise StoreError(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "AggregateNotFound",
    "BrokerError",
    "BrokerUnavailable",
    "CommandRejected",
    "ConcurrencyError",
    "CorruptEvent",
    "DomainError",
    "DuplicateEventType",
    "IdempotencyConflict",
    "InvalidStreamId",
    "ObeliskError",
    "ProjectionNotFound",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "UnhandledEvent",
    "UnknownEventType",
    "UnstorableValue",
    "UsageError",
    "ValidationError",
]


class ObeliskError(Exception):
    """Base of every error obelisk raises."""


class ValidationError(ObeliskError, ValueError):
    """Input was malformed or mistyped; nothing was written."""


class InvalidStreamId(ValidationError):
    """A stream id is empty, too long or holds control characters."""


class UsageError(ObeliskError, RuntimeError):
    """obelisk was called in a way it cannot serve: an application used before it is open,
    a job enqueued with no job queue configured. Fix the calling code; retrying won't help."""


class DomainError(ObeliskError):
    """Base for business-rule violations raised by user aggregates (optional to use)."""


class CommandRejected(ObeliskError):
    """A command could not be handled: no handler, or the aggregate refused it."""


class AggregateNotFound(ObeliskError, LookupError):
    """The stream of the requested aggregate has no events."""

    def __init__(self, aggregate_type: str, aggregate_id: str) -> None:
        super().__init__(f"{aggregate_type} {aggregate_id!r} not found")
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id


class UnhandledEvent(ObeliskError, TypeError):
    """An aggregate received an event type it has no apply method for."""


class DuplicateEventType(ObeliskError, TypeError):
    """Two different event classes claim the same stable type name."""


class ConcurrencyError(ObeliskError):
    """A stream was not at the expected version: another writer got there first.

    Nothing of the failed append was written.
    """

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected {_describe(expected)}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyConflict(ObeliskError):
    """An append reused event ids already stored, but not as the same append."""


class StoreError(ObeliskError):
    """The event store failed; the message names the cause."""


class StoreUnavailable(StoreError):
    """The store cannot accept writes now (read-only, locked, disk full, connection lost).

    A pending append that gets this error was not acknowledged and was not written.
    """


class StoreClosed(StoreError):
    """The store was closed before the operation could run."""


class UnstorableValue(StoreError, ValidationError):
    """A value the database cannot hold (a lone surrogate, NUL in text, an integer beyond
    64 bits, a type no column takes); nothing of the statement was written.

    A StoreError, so a projection batch that writes one dead-letters its event (or stops)
    like any refused row, and a ValidationError, as the value is bad input.
    """


class ProjectionNotFound(ObeliskError, LookupError):
    """The read store holds no projection of that name."""


class _StoredEventError(StoreError):
    def __init__(self, reason: str, stream_id: str, version: int, position: int) -> None:
        super().__init__(f"{reason} (stream {stream_id!r}, version {version}, position {position})")
        self.reason = reason
        self.stream_id = stream_id
        self.version = version
        self.position = position


class UnknownEventType(_StoredEventError):
    """A stored event names a type no registered class has. The row is left as it is."""

    def __init__(self, type_name: str, stream_id: str, version: int, position: int) -> None:
        super().__init__(f"unknown event type {type_name!r}", stream_id, version, position)
        self.type_name = type_name


class CorruptEvent(_StoredEventError):
    """A stored event's payload cannot be decoded into its type. The row is left as it is."""


class BrokerError(ObeliskError):
    """A message broker refused an operation; the message names the cause."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now (connection refused or lost, server restarting).

    A publish that gets this error may or may not have reached the broker: publishers that
    must not lose or repeat messages publish with sequences (the outbox relay does).
    """


def _describe(expected: int) -> str:
    if expected == 0:
        return "no stream"
    if expected == -1:
        return "any version"
    return f"version {expected}"
