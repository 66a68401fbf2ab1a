"""Defence in depth on the read side: a row that cannot be decoded (written by old code, by
another writer or by hand) stalls nothing and is never skipped in silence.

Each test writes a ledger through the store, then damages one row behind its back (its
payload, or its type name), on SQLite and PostgreSQL, and on the memory store where the
store's own API allows. Before this change the same scenarios ended in a projection that
could not dead-letter the row, and a subscription retrying every second forever.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from obelisk.cli import app as cli_app
from obelisk.domain.events import UndecodableEvent
from obelisk.errors import CorruptEvent, UnknownEventType
from obelisk.messaging import OutboxRelay
from obelisk.messaging import message as message_headers
from obelisk.messaging.memory import MemoryBroker
from obelisk.observability.metrics import Metrics
from obelisk.projections import ProjectionRunner
from obelisk.store import NO_STREAM, MemoryEventStore, StoredEvent
from obelisk.store.base import EventStore
from obelisk.store.scan import find_undecodable

from ._projection_helpers import WAIT, Backend, ledger_rows, open_backend, reach, running, visible
from ._projection_worker import Ledger, LedgerCredited, LedgerOpened
from .test_observability import _samples

DAMAGED = b"\xff\x00"  # what Backend.damage_event writes: no codec decodes it


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]) -> Backend:
    return open_backend(request, tmp_path)


async def write_and_damage(backend: Backend, store: EventStore) -> int:
    """Ledger ``l-1`` (opened, credits 1, 2, 4); version 3's payload destroyed. Its position."""
    result = await store.append(
        "l-1",
        [LedgerOpened(owner="ann"), *(LedgerCredited(amount=n) for n in (1, 2, 4))],
        NO_STREAM,
    )
    await backend.damage_event("l-1", 3)
    await visible(store, result.last_position)
    return result.first_position + 2


async def rename_type(backend: Backend, stream_id: str, version: int, name: str) -> None:
    """Give one stored event a type name no class has (a class deleted from the code)."""
    sql = "UPDATE {table} SET event_type = '{name}' WHERE stream_id = '{sid}' AND version = {v}"
    if backend.kind == "sqlite":
        with closing(sqlite3.connect(backend.events_path)) as conn, conn:
            conn.execute(sql.format(table="obelisk_events", name=name, sid=stream_id, v=version))
        return
    import asyncpg

    pg = await asyncpg.connect(backend.dsn)
    try:
        table = f'"{backend.schema}".obelisk_events'
        await pg.execute(sql.format(table=table, name=name, sid=stream_id, v=version))
    finally:
        await pg.close()


def versions(page: list[StoredEvent]) -> list[int]:
    return [stored.version for stored in page]


# -- reads ------------------------------------------------------------------------------------


async def test_a_plain_read_names_the_row_and_a_keeping_read_hands_it_out_in_its_place(
    backend: Backend,
) -> None:
    async with backend.event_store() as store:
        corrupt = await write_and_damage(backend, store)
        with pytest.raises(CorruptEvent) as info:
            await store.read_all()
        assert (info.value.stream_id, info.value.version, info.value.position) == (
            "l-1", 3, corrupt,
        )  # fmt: skip
        page = await store.read_all(keep_undecodable=True)
        assert versions(page) == [1, 2, 3, 4]
        placeholder = page[2].event
        assert isinstance(placeholder, UndecodableEvent)
        assert placeholder.data == DAMAGED
        assert placeholder.type_name == LedgerCredited.event_type
        assert not placeholder.unknown_type
        assert page[2].event_type == LedgerCredited.event_type
        assert page[3].event == LedgerCredited(amount=4)  # the rest is intact


async def test_an_event_of_an_unknown_type_is_kept_as_such(backend: Backend) -> None:
    async with backend.event_store() as store:
        result = await store.append("l-1", [LedgerOpened(owner="ann"), LedgerCredited(amount=1)])
        await rename_type(backend, "l-1", 2, "ledger.Gone")
        await visible(store, result.last_position)
        with pytest.raises(UnknownEventType):
            await store.read_all()
        gone = (await store.read_all(keep_undecodable=True))[1].event
        assert isinstance(gone, UndecodableEvent)
        assert (gone.type_name, gone.unknown_type) == ("ledger.Gone", True)
        assert json.loads(gone.data) == {"amount": 1}  # the payload itself is sound


async def test_the_memory_store_keeps_an_undecodable_row_too() -> None:
    async with MemoryEventStore() as store:
        await store.append("l-1", [LedgerOpened(owner="ann"), LedgerCredited(amount=1)])
        store._log[0].encoded.data = DAMAGED  # behind the store's back
        with pytest.raises(CorruptEvent):
            await store.read_all()
        first, second = await store.read_all(keep_undecodable=True)
        assert isinstance(first.event, UndecodableEvent) and first.event.data == DAMAGED
        assert second.event == LedgerCredited(amount=1)


# -- followers --------------------------------------------------------------------------------


async def test_a_memory_store_subscription_stops_at_an_undecodable_event_too() -> None:
    async with MemoryEventStore() as store:
        await store.append("l-1", [LedgerOpened(owner="ann"), LedgerCredited(amount=1)])
        store._log[1].encoded.data = DAMAGED
        seen: list[int] = []

        async def follow() -> None:
            async for stored in store.subscribe(poll_interval=0.05):
                seen.append(stored.version)

        with pytest.raises(CorruptEvent) as info:
            await asyncio.wait_for(follow(), WAIT)
        assert (seen, info.value.version) == ([1], 2)


async def test_a_subscription_hands_out_what_precedes_an_undecodable_event_then_raises_it(
    backend: Backend,
) -> None:
    async with backend.event_store() as store:
        corrupt = await write_and_damage(backend, store)
        seen: list[StoredEvent] = []
        subscription = store.subscribe(page_size=2, poll_interval=0.05)

        async def follow() -> None:
            async for stored in subscription:
                seen.append(stored)

        with pytest.raises(CorruptEvent) as info:
            await asyncio.wait_for(follow(), WAIT)  # not a retry every second, forever
        assert info.value.position == corrupt
        assert versions(seen) == [1, 2]
        # Left before the bad row: a repaired store resumes there.
        assert subscription.position == seen[-1].position
        assert subscription.undecodable == 1


async def test_a_subscription_that_asks_for_them_gets_undecodable_events_and_goes_on(
    backend: Backend,
) -> None:
    async with backend.event_store() as store:
        await write_and_damage(backend, store)
        got: list[StoredEvent] = []
        async with store.subscribe(undecodable="yield", poll_interval=0.05) as subscription:
            async for stored in subscription:
                got.append(stored)
                if len(got) == 4:
                    break
        assert versions(got) == [1, 2, 3, 4]
        assert isinstance(got[2].event, UndecodableEvent)
        assert subscription.undecodable == 1


async def test_a_projection_dead_letters_an_undecodable_event_with_its_payload_and_goes_on(
    backend: Backend,
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        corrupt = await write_and_damage(backend, store)
        runner = ProjectionRunner(
            Ledger(), store, read_store, on_error="dead-letter", page_size=2, poll_interval=0.05
        )
        async with running(runner) as task:
            head = await store.last_position()
            await reach(runner, task, head)
            # Every event but the damaged one is applied: 1 + 4, three credits' versions.
            assert await ledger_rows(read_store) == {"l-1": ("ann", 5, 2, 4)}
            (letter,) = await read_store.dead_letters(Ledger.name)
            assert (letter.stream_id, letter.version, letter.position) == ("l-1", 3, corrupt)
            assert letter.event_type == LedgerCredited.event_type
            assert letter.error.startswith("obelisk.errors.CorruptEvent: cannot decode")
            assert f"payload: {DAMAGED!r}" in letter.error
            assert runner.dead_lettered == 1
            # And it follows new events after it.
            more = await store.append("l-1", [LedgerCredited(amount=8)])
            await reach(runner, task, more.last_position)
            assert await ledger_rows(read_store) == {"l-1": ("ann", 13, 3, 5)}


async def test_the_relay_publishes_an_undecodable_event_as_stored(backend: Backend) -> None:
    broker = MemoryBroker()
    metrics = Metrics()
    async with backend.event_store() as store, backend.read_store() as read_store:
        await write_and_damage(backend, store)
        relay = OutboxRelay(store, read_store, broker)
        metrics.watch_relay(relay)
        await asyncio.wait_for(relay.run_until_caught_up(), WAIT)
    messages = [entry.message for entry in await broker.read("events")]
    assert len(messages) == 4  # nothing skipped
    damaged = messages[2]
    assert damaged.payload == DAMAGED
    assert damaged.headers[message_headers.EVENT_TYPE] == LedgerCredited.event_type
    assert relay.undecodable == 1
    samples = _samples(metrics)
    assert samples[("obelisk_relay_undecodable_total", (("relay", "relay:relay"),))] == 1


# -- finding them -----------------------------------------------------------------------------


async def test_find_undecodable_lists_every_bad_row_across_pages(backend: Backend) -> None:
    async with backend.event_store() as store:
        corrupt = await write_and_damage(backend, store)
        await store.append("l-2", [LedgerOpened(owner="bob"), LedgerCredited(amount=1)])
        await rename_type(backend, "l-2", 2, "ledger.Gone")
        found = await find_undecodable(store, page_size=2)
        assert [(s.stream_id, s.version) for s in found] == [("l-1", 3), ("l-2", 2)]
        assert found[0].position == corrupt
        assert await find_undecodable(store, limit=1, page_size=2) == found[:1]


def test_obelisk_inspect_undecodable_lists_them_and_exits_1(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)

    async def prepare() -> None:
        async with backend.event_store() as store:
            await write_and_damage(backend, store)

    asyncio.run(prepare())
    url = f"sqlite:///{backend.events_path}"
    result = CliRunner().invoke(cli_app, ["inspect", url, "--undecodable", "--json"])
    assert result.exit_code == 1, result.output
    (row,) = json.loads(result.stdout)["undecodable"]
    assert (row["stream_id"], row["version"], row["event_type"]) == (
        "l-1", 3, LedgerCredited.event_type,
    )  # fmt: skip
    assert row["payload"] == "\\xff\x00"
    assert row["reason"].startswith("cannot decode")

    table = CliRunner().invoke(cli_app, ["inspect", url, "--undecodable"])
    assert table.exit_code == 1
    assert "1 undecodable event(s)" in table.stdout


async def test_a_malformed_type_key_from_another_writer_is_an_undecodable_event(
    tmp_path: Path,
) -> None:
    backend = Backend("sqlite", tmp_path)
    async with backend.event_store() as store:
        await store.append("l-1", [LedgerOpened(owner="ann"), LedgerCredited(amount=1)])
        with closing(sqlite3.connect(backend.events_path)) as conn, conn:
            conn.execute("UPDATE obelisk_events SET schema_version = 'x' WHERE version = 2")
        with pytest.raises(CorruptEvent, match="malformed type key"):
            await store.read_all()
        first, second = await store.read_all(keep_undecodable=True)
        assert first.event == LedgerOpened(owner="ann")
        assert isinstance(second.event, UndecodableEvent)
        assert second.event.type_name == LedgerCredited.event_type
        with pytest.raises(CorruptEvent):
            await store.read_stream_events("l-1")
