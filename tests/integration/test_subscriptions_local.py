"""Subscriptions on the in-process stores: MemoryEventStore and SQLiteEventStore.

A subscription catches up from its checkpoint, then follows live commits. A commit made
through the same store object wakes it at once (its poll interval here is far longer than
any test waits); commits by another SQLiteEventStore object on the same file reach it only
by polling. ``SubscriptionReader`` is shared with the PostgreSQL subscription tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreClosed, ValidationError
from obelisk.store import NO_STREAM, EventStore, MemoryEventStore, SQLiteEventStore, StoredEvent
from obelisk.store.subscription import Subscription

__all__ = ["SubscriptionReader", "assert_exactly_once_in_order", "until"]

# Longer than any wait in these tests: an event that arrives did not come from polling.
NEVER_POLL = 60.0
WAIT = 10.0


class SubLocalTicked(Event):
    event_type = "test_subscriptions_local.Ticked"
    n: int


class SubLocalTocked(Event):
    event_type = "test_subscriptions_local.Tocked"
    n: int


class SubscriptionReader:
    """Iterates a subscription in a task and lets a test wait for a number of events.

    ``stop()`` closes the subscription and checks that the iteration ended by itself.
    """

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[StoredEvent] = []
        self._changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.sub:
                self.events.append(event)
                self._changed.set()
        finally:
            self._changed.set()  # a waiter sees a failed iteration at once

    async def wait_for(self, count: int, within: float = WAIT) -> list[StoredEvent]:
        """Wait until ``count`` events arrived (TimeoutError after ``within`` s)."""

        async def arrived() -> None:
            while len(self.events) < count:
                if self.task.done():
                    self.task.result()  # raises the iteration's error, if any
                    raise AssertionError(f"iteration ended after {len(self.events)} events")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(arrived(), within)
        return list(self.events)

    async def stop(self) -> None:
        await self.sub.aclose()
        await asyncio.wait_for(self.task, WAIT)


def assert_exactly_once_in_order(
    received: Sequence[StoredEvent], expected: Sequence[StoredEvent]
) -> None:
    """``received`` holds each expected event once, in position order, and nothing else."""
    positions = [e.position for e in received]
    assert positions == sorted(set(positions)), "duplicates or out of position order"
    assert [(e.position, e.stream_id, e.version) for e in received] == [
        (e.position, e.stream_id, e.version) for e in expected
    ]


def _ticks(*numbers: int) -> list[Event]:
    return [SubLocalTicked(n=n) for n in numbers]


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[EventStore]:
    local: EventStore
    if request.param == "memory":
        local = MemoryEventStore()
    else:
        local = SQLiteEventStore(tmp_path / "events.db")
    async with local:
        yield local


async def test_a_subscription_catches_up_in_pages_then_follows_live_commits(
    store: EventStore,
) -> None:
    for i in range(5):
        await store.append(f"local-{i % 2}", _ticks(i))
    sub = store.subscribe(page_size=2, poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        caught_up = await reader.wait_for(5)
        assert [e.event for e in caught_up] == _ticks(0, 1, 2, 3, 4)
        assert sub.reads >= 3  # five events in pages of two

        await store.append("local-live", _ticks(5, 6), NO_STREAM)
        live = await reader.wait_for(7)
    finally:
        await reader.stop()
    assert_exactly_once_in_order(live, await store.read_all())
    assert sub.position == live[-1].position


async def test_a_commit_through_the_same_store_wakes_a_waiting_subscription(
    store: EventStore,
) -> None:
    sub = store.subscribe(poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        # Wait until it has read once and gone to sleep on an empty log.
        await asyncio.wait_for(until(lambda: sub.reads >= 1), WAIT)
        await store.append("local-wake", _ticks(1))
        (event,) = await reader.wait_for(1)
    finally:
        await reader.stop()
    assert event.stream_id == "local-wake"
    assert event.event == SubLocalTicked(n=1)


async def test_a_subscription_with_types_sees_only_those_types(store: EventStore) -> None:
    await store.append("local-mixed", [SubLocalTicked(n=1), SubLocalTocked(n=2)])
    sub = store.subscribe(types=[SubLocalTocked.event_type], poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    try:
        await reader.wait_for(1)
        await store.append("local-mixed", [SubLocalTicked(n=3), SubLocalTocked(n=4)])
        received = await reader.wait_for(2)
        await store.append("local-other", [SubLocalTocked(n=5)])
        received = await reader.wait_for(3)
    finally:
        await reader.stop()
    assert [e.event for e in received] == [
        SubLocalTocked(n=2),
        SubLocalTocked(n=4),
        SubLocalTocked(n=5),
    ]
    assert len(reader.events) == 3


async def test_a_subscription_resumes_after_its_checkpoint(store: EventStore) -> None:
    await store.append("local-resume", _ticks(1, 2, 3))
    first = store.subscribe(poll_interval=NEVER_POLL)
    reader = SubscriptionReader(first)
    try:
        await reader.wait_for(3)
    finally:
        await reader.stop()
    await store.append("local-resume", _ticks(4))

    resumed = SubscriptionReader(store.subscribe(after=first.position, poll_interval=NEVER_POLL))
    try:
        received = await resumed.wait_for(1)
    finally:
        await resumed.stop()
    assert [e.event for e in received] == _ticks(4)


async def test_aclose_ends_an_iteration_that_is_waiting_for_events(store: EventStore) -> None:
    sub = store.subscribe(poll_interval=NEVER_POLL)
    reader = SubscriptionReader(sub)
    await asyncio.wait_for(until(lambda: sub.reads >= 1), WAIT)
    await sub.aclose()
    # Ends by itself (well before the 60 s poll interval): no cancellation needed.
    await asyncio.wait_for(reader.task, WAIT)
    assert reader.events == []
    # A closed subscription no longer hears the store.
    await store.append("local-after-close", _ticks(1))
    assert reader.events == []
    assert not store._wakers


async def test_a_subscription_on_a_closed_store_raises_store_closed(tmp_path: Path) -> None:
    closed = SQLiteEventStore(tmp_path / "closed.db")
    async with closed:
        pass
    sub = closed.subscribe()
    with pytest.raises(StoreClosed):
        async for _ in sub:
            pass
    await sub.aclose()


@pytest.mark.parametrize(
    "kwargs",
    [{"after": -1}, {"after": 1.5}, {"page_size": 0}, {"poll_interval": 0}],
)
def test_a_subscription_refuses_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        MemoryEventStore().subscribe(**kwargs)  # type: ignore[arg-type]


async def test_a_commit_by_another_sqlite_store_object_is_seen_by_polling(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteEventStore(path) as follower, SQLiteEventStore(path) as writer:
        sub = follower.subscribe(poll_interval=0.1)
        reader = SubscriptionReader(sub)
        try:
            await asyncio.wait_for(until(lambda: sub.reads >= 1), WAIT)
            for i in range(3):
                await writer.append("local-other-process", _ticks(i))
            received = await reader.wait_for(3)
        finally:
            await reader.stop()
        assert_exactly_once_in_order(received, await writer.read_all())
        # Nothing woke it: the other object's commits do not reach this one's wakers.
        assert sub.wakeups == 0
        assert sub.reads >= 2


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (callers bound it with ``asyncio.wait_for``)."""
    # Polling: the conditions are counters inside the code under test, which sets no event.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
