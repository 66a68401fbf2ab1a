"""The domain layer: events and aggregates, pure Python with no I/O."""

from obelisk.domain.aggregate import Aggregate, applies, command
from obelisk.domain.events import (
    Event,
    EventRegistry,
    UndecodableEvent,
    Upcaster,
    default_registry,
)

__all__ = [
    "Aggregate",
    "Event",
    "EventRegistry",
    "UndecodableEvent",
    "Upcaster",
    "applies",
    "command",
    "default_registry",
]
