"""Subscriptions on PostgresEventStore, on a real server.

Two store objects on one schema stand for two processes: a commit through one reaches a
subscription on the other only through LISTEN/NOTIFY (or, failing that, polling). Where a
test proves that NOTIFY woke a subscription, its poll interval is far longer than the
test's generous wait, so the event cannot have arrived by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreClosed
from obelisk.store import NO_STREAM, AppendRequest
from obelisk.store.postgres import PostgresEventStore, _Listener
from obelisk.store.subscription import Subscription

from .test_subscriptions_local import SubscriptionReader, assert_exactly_once_in_order, until

NEVER_POLL = 60.0
WAIT = 10.0


class PgSubTicked(Event):
    event_type = "test_postgres_subscriptions.Ticked"
    n: int


class PgSubTocked(Event):
    event_type = "test_postgres_subscriptions.Tocked"
    n: int


def _ticks(*numbers: int) -> list[Event]:
    return [PgSubTicked(n=n) for n in numbers]


def _store(dsn: str, schema: str) -> PostgresEventStore:
    return PostgresEventStore(dsn, schema=schema, pool_min_size=1, pool_max_size=4)


@pytest.fixture
async def store(
    postgres_dsn: str, pg_schema: str, loop_errors: list[object]
) -> AsyncIterator[PostgresEventStore]:
    async with _store(postgres_dsn, pg_schema) as opened:
        yield opened


@pytest.fixture
async def other(
    postgres_dsn: str, pg_schema: str, store: PostgresEventStore
) -> AsyncIterator[PostgresEventStore]:
    """A second store object on the same schema: another process, as far as NOTIFY goes."""
    async with _store(postgres_dsn, pg_schema) as opened:
        yield opened


def listener_of(sub: Subscription) -> _Listener:
    channel = sub._channel
    assert isinstance(channel, _Listener), channel
    return channel


async def listening(sub: Subscription) -> int:
    """Wait until the subscription has listened and read once; the LISTEN backend's pid."""
    await asyncio.wait_for(until(lambda: sub.reads >= 1), WAIT)
    conn = listener_of(sub)._conn
    assert conn is not None
    return conn.get_server_pid()


async def backend_query(dsn: str, pid: int) -> str | None:
    """The last query of backend ``pid``, or None once it has gone."""
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await conn.close()
    return None if value is None else str(value)


async def test_a_subscription_catches_up_in_pages_then_follows_live_commits(
    store: PostgresEventStore,
) -> None:
    for i in range(5):
        await store.append(f"pgsub-{i % 2}", _ticks(i))
    sub = store.subscribe(page_size=2, poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        caught_up = await reader.wait_for(5)
        assert [e.event for e in caught_up] == _ticks(0, 1, 2, 3, 4)
        assert sub.reads >= 3  # five events in pages of two

        await store.append("pgsub-live", _ticks(5, 6), NO_STREAM)
        await store.append_many(
            [AppendRequest("pgsub-0", _ticks(7)), AppendRequest("pgsub-1", _ticks(8))]
        )
        live = await reader.wait_for(9)
    finally:
        await reader.stop()
    assert_exactly_once_in_order(live, await store.read_all())
    assert sub.position == live[-1].position


async def test_a_commit_through_another_store_object_wakes_a_subscription_by_notify(
    store: PostgresEventStore, other: PostgresEventStore
) -> None:
    sub = other.subscribe(poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        await listening(sub)
        listener = listener_of(sub)
        for i in range(3):
            await store.append("pgsub-remote", _ticks(i))
            # Received long before the 60 s poll: only NOTIFY can have woken it.
            await reader.wait_for(i + 1)
        received = list(reader.events)
        wakeups = sub.wakeups
    finally:
        await reader.stop()
    assert [e.event for e in received] == _ticks(0, 1, 2)
    assert wakeups >= 1
    assert listener.connects == 1


async def test_a_subscription_with_types_sees_only_those_types(
    store: PostgresEventStore, other: PostgresEventStore
) -> None:
    await store.append("pgsub-mixed", [PgSubTicked(n=1), PgSubTocked(n=2)])
    sub = other.subscribe(types=[PgSubTocked.event_type], poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        await reader.wait_for(1)
        await store.append("pgsub-mixed", [PgSubTicked(n=3), PgSubTocked(n=4)])
        await store.append("pgsub-other", [PgSubTicked(n=5)])
        await store.append("pgsub-other", [PgSubTocked(n=6)])
        received = await reader.wait_for(3)
    finally:
        await reader.stop()
    assert [e.event for e in received] == [PgSubTocked(n=2), PgSubTocked(n=4), PgSubTocked(n=6)]
    assert len(reader.events) == 3


async def test_aclose_releases_the_listen_connection(
    store: PostgresEventStore, postgres_dsn: str
) -> None:
    sub = store.subscribe(poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    pid = await listening(sub)
    query = await backend_query(postgres_dsn, pid)
    assert query is not None and query.upper().startswith("LISTEN"), query

    await reader.stop()

    async def gone() -> None:
        # The backend exits just after the client said goodbye: give it a moment.
        while await backend_query(postgres_dsn, pid) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), WAIT)
    assert sub._channel is None


async def test_polling_still_delivers_when_no_notify_is_sent(
    postgres_dsn: str, pg_schema: str, other: PostgresEventStore
) -> None:
    silent = _store(postgres_dsn, pg_schema)
    # The writer's commit callback is bound at open: silence it first, so that neither
    # the local wakers nor NOTIFY hear of any commit.
    silent._committed = lambda: None  # type: ignore[method-assign]
    async with silent:
        sub = other.subscribe(poll_interval=0.1)
        reader = SubscriptionReader(sub)
        try:
            await listening(sub)
            await silent.append("pgsub-silent", _ticks(1, 2))
            await silent.import_events(
                [
                    AppendRequest("pgsub-imported", _ticks(3)),
                    AppendRequest("pgsub-silent", _ticks(4)),
                ]
            )
            received = await reader.wait_for(4)
            wakeups = sub.wakeups  # closing the LISTEN connection below wakes it once more
        finally:
            await reader.stop()
        assert_exactly_once_in_order(received, await silent.read_all())
    assert [e.event for e in received] == _ticks(1, 2, 3, 4)
    assert wakeups == 0  # polling alone delivered them


async def test_a_store_with_another_prefix_does_not_feed_the_subscription(
    postgres_dsn: str, pg_schema: str, store: PostgresEventStore
) -> None:
    async with PostgresEventStore(
        postgres_dsn, schema=pg_schema, prefix="neighbour_", pool_min_size=1
    ) as neighbour:
        assert neighbour.channel != store.channel
        sub = store.subscribe(poll_interval=NEVER_POLL)
        reader = SubscriptionReader(sub)
        try:
            await listening(sub)
            await neighbour.append("pgsub-neighbour", _ticks(1))
            await store.append("pgsub-own", _ticks(2))
            received = await reader.wait_for(1)
        finally:
            await reader.stop()
    assert [(e.stream_id, e.event) for e in received] == [("pgsub-own", PgSubTicked(n=2))]


async def test_closing_the_store_ends_a_subscription_and_releases_its_listen_connection(
    postgres_dsn: str, pg_schema: str
) -> None:
    store = _store(postgres_dsn, pg_schema)
    await store.open()
    sub = store.subscribe(poll_interval=0.1)
    reader = SubscriptionReader(sub)
    try:
        await listening(sub)
        conn = listener_of(sub)._conn
        assert conn is not None
        await store.close()
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(reader.task, WAIT)
        assert conn.is_closed()
    finally:
        await sub.aclose()
