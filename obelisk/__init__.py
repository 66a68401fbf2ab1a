"""obelisk: performance-critical domain-driven design for asyncio."""

from obelisk.application import (
    Application,
    Command,
    LoadBudget,
    RetryPolicy,
    SnapshotPolicy,
    UnitOfWork,
)
from obelisk.domain import Aggregate, Event, applies, command
from obelisk.errors import (
    AggregateNotFound,
    CommandRejected,
    ConcurrencyError,
    CorruptEvent,
    DomainError,
    IdempotencyConflict,
    InvalidStreamId,
    ObeliskError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    UnknownEventType,
    ValidationError,
)
from obelisk.store import (
    ANY,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    EventStore,
    MemoryEventStore,
    SQLiteEventStore,
    StoredEvent,
)

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "NO_STREAM",
    "Aggregate",
    "AggregateNotFound",
    "AppendRequest",
    "AppendResult",
    "Application",
    "Command",
    "CommandRejected",
    "ConcurrencyError",
    "CorruptEvent",
    "DomainError",
    "Event",
    "EventStore",
    "IdempotencyConflict",
    "InvalidStreamId",
    "LoadBudget",
    "MemoryEventStore",
    "ObeliskError",
    "RetryPolicy",
    "SQLiteEventStore",
    "SnapshotPolicy",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "StoredEvent",
    "UnitOfWork",
    "UnknownEventType",
    "ValidationError",
    "__version__",
    "applies",
    "command",
]
