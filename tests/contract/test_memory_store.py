"""The EventStore contract, run against MemoryEventStore."""

from __future__ import annotations

from obelisk.store import EventCodec, EventStore, MemoryEventStore
from obelisk.testing import EventStoreContract


class TestMemoryEventStore(EventStoreContract):
    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        store = MemoryEventStore(codec=codec)
        await store.open()
        return store
