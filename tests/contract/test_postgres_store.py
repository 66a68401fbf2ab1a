"""The EventStore contract, run against PostgresEventStore on a real server."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from obelisk.store import EventCodec, EventStore
from obelisk.store.postgres import PostgresEventStore
from obelisk.testing import DurableEventStoreContract

_schemas = itertools.count()


class TestPostgresEventStore(DurableEventStoreContract):
    # No global lock, so positions jump between transactions (see obelisk.store._pg_schema).
    contiguous_positions = False

    dsn: str
    created: list[str]

    @pytest.fixture(autouse=True)
    async def _postgres(self, postgres_dsn: str) -> AsyncIterator[None]:
        self.dsn = postgres_dsn
        self.created = []
        yield
        conn = await asyncpg.connect(postgres_dsn)
        try:
            for schema in self.created:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        # A schema per call: the state machine asks for one empty store per example.
        schema = f"c_{uuid.uuid4().hex[:12]}_{next(_schemas)}"
        self.created.append(schema)
        store = PostgresEventStore(self.dsn, schema=schema, codec=codec, pool_min_size=1)
        await store.open()
        return store

    async def reopen_store(self, store: EventStore) -> EventStore:
        assert isinstance(store, PostgresEventStore)
        reopened = PostgresEventStore(
            self.dsn, schema=store.names.schema_name, codec=store.codec, pool_min_size=1
        )
        await reopened.open()
        return reopened
