"""Only obelisk errors: hostile arguments to every public entry point of the event stores
(memory, SQLite, PostgreSQL) raise an ObeliskError subclass or succeed, and whatever they
did, the store still gives back every row it holds.

Before this change, e.g., SQLite's ``list_streams(after="\\ud800")`` raised
UnicodeEncodeError and ``read_all(after=2**70)`` OverflowError (issue 15, case 4).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.domain import Event
from obelisk.domain.events import UndecodableEvent
from obelisk.errors import ObeliskError, ValidationError
from obelisk.store import AppendRequest, EventStore, MemoryEventStore, Snapshot, SQLiteEventStore
from obelisk.store.postgres import PostgresEventStore
from obelisk.testing.hostile import nested


class Noted(Event):
    event_type = "hostile_store.Noted"
    count: int
    text: str = ""


class Free(Event):
    event_type = "hostile_store.Free"
    body: Any


class Deep:
    """Stands for a list nested ``depth`` deep (hypothesis prints it, and its printer
    recurses: the value itself is built only for the call)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"nested({self.depth})"


_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
HOSTILE = st.one_of(
    st.sampled_from(
        [
            "\ud800", "a\udfffb", "\x00", "nul\x00inside", "", " ", "x" * 201, "y" * 1_000_000,
            2**70, -(2**70), 2**63, -(2**63) - 1, -1, 0, 10**30,
            float("nan"), float("inf"), float("-inf"), 1.5, True,
            None, b"bytes", b"\xff\x00", [1], {"a": 1}, (), object(),
            Deep(200), Deep(5_000),
        ]
    ),
    _ANY_TEXT,
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=3),
)

Call = Callable[[EventStore, Any], Awaitable[object]]


def _snapshot(**changes: Any) -> Snapshot:
    base = Snapshot("s", 1, "Thing", 1, b"state", 0.0)
    return msgspec.structs.replace(base, **changes)


async def _subscribe(store: EventStore, **kwargs: Any) -> None:
    subscription = store.subscribe(**kwargs)
    await subscription.aclose()


CALLS: dict[str, Call] = {
    "append stream_id": lambda s, v: s.append(v, [Noted(count=1)]),
    "append events": lambda s, v: s.append("s", v),
    "append event list": lambda s, v: s.append("s", [v]),
    "append int field": lambda s, v: s.append("s", [Noted(count=v)]),
    "append str field": lambda s, v: s.append("s", [Noted(count=1, text=v)]),
    "append any field": lambda s, v: s.append("s", [Free(body=v)]),
    "append expected_version": lambda s, v: s.append("s", [Noted(count=1)], v),
    "append event_ids": lambda s, v: s.append("s", [Noted(count=1)], event_ids=v),
    "append stream_type": lambda s, v: s.append("s", [Noted(count=1)], stream_type=v),
    "append correlation_id": lambda s, v: s.append("s", [Noted(count=1)], correlation_id=v),
    "append causation_id": lambda s, v: s.append("s", [Noted(count=1)], causation_id=v),
    "append_many": lambda s, v: s.append_many(v),
    "append_many request": lambda s, v: s.append_many([AppendRequest("s", [Noted(count=1)]), v]),
    "read_stream stream_id": lambda s, v: s.read_stream(v),
    "read_stream from_version": lambda s, v: s.read_stream("s", from_version=v),
    "read_stream to_version": lambda s, v: s.read_stream("s", to_version=v),
    "read_stream limit": lambda s, v: s.read_stream("s", limit=v),
    "read_stream_events stream_id": lambda s, v: s.read_stream_events(v),
    "read_stream_events from_version": lambda s, v: s.read_stream_events("s", from_version=v),
    "read_all after": lambda s, v: s.read_all(after=v),
    "read_all limit": lambda s, v: s.read_all(limit=v),
    "read_all types": lambda s, v: s.read_all(types=v),
    "read_all type name": lambda s, v: s.read_all(types=[v]),
    "last_position_of": lambda s, v: s.last_position_of(v),
    "last_position_of item": lambda s, v: s.last_position_of([v]),
    "stream_version": lambda s, v: s.stream_version(v),
    "list_streams after": lambda s, v: s.list_streams(after=v),
    "list_streams limit": lambda s, v: s.list_streams(limit=v),
    "save_snapshots": lambda s, v: s.save_snapshots(v),
    "save_snapshots stream_id": lambda s, v: s.save_snapshots([_snapshot(stream_id=v)]),
    "save_snapshots version": lambda s, v: s.save_snapshots([_snapshot(version=v)]),
    "save_snapshots type": lambda s, v: s.save_snapshots([_snapshot(aggregate_type=v)]),
    "save_snapshots schema": lambda s, v: s.save_snapshots([_snapshot(schema_version=v)]),
    "save_snapshots state": lambda s, v: s.save_snapshots([_snapshot(state=v)]),
    "save_snapshots taken_at": lambda s, v: s.save_snapshots([_snapshot(taken_at=v)]),
    "load_snapshot": lambda s, v: s.load_snapshot(v),
    "load_from_snapshot": lambda s, v: s.load_from_snapshot(v),
    "delete_snapshot stream_id": lambda s, v: s.delete_snapshot(v, 1),
    "delete_snapshot version": lambda s, v: s.delete_snapshot("s", v),
    "stream_sizes": lambda s, v: s.stream_sizes(limit=v),
    "subscribe after": lambda s, v: _subscribe(s, after=v),
    "subscribe page_size": lambda s, v: _subscribe(s, page_size=v),
    "subscribe poll_interval": lambda s, v: _subscribe(s, poll_interval=v),
    "subscribe types": lambda s, v: _subscribe(s, types=v),
}


class OpenStore:
    """One store opened on a loop of its own, so that hypothesis (synchronous) can drive it
    example after example without reopening it."""

    def __init__(self, store: EventStore) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = store
        self.run(store.open())

    def run(self, coroutine: Awaitable[object]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 60))

    def close(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()


@pytest.fixture(scope="module", params=["memory", "sqlite", "postgresql"])
def opened(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenStore]:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"t_{uuid.uuid4().hex}"
        store: EventStore = PostgresEventStore(dsn, schema=schema, pool_min_size=1)
    elif request.param == "sqlite":
        folder: Path = tmp_path_factory.mktemp("hostile")
        store = SQLiteEventStore(folder / "events.db")
    else:
        store = MemoryEventStore()
    handle = OpenStore(store)
    try:
        yield handle
    finally:
        handle.close()
        if request.param == "postgresql":
            asyncio.run(_drop_schema(dsn, schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _probe(store: EventStore, call: Call, value: Any) -> BaseException | None:
    if isinstance(value, Deep):
        value = nested(value.depth)
    try:
        await call(store, value)
    except ObeliskError:
        pass
    except Exception as exc:  # what the test exists to catch
        return exc
    return None


async def _every_row_reads_back(store: EventStore) -> None:
    after = 0
    while page := await store.read_all(after=after, limit=500, keep_undecodable=True):
        bad = [s for s in page if type(s.event) is UndecodableEvent]
        assert not bad, f"the store holds rows it cannot give back: {bad[:3]}"
        after = page[-1].position


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=st.sampled_from(sorted(CALLS)), value=HOSTILE)
def test_hostile_arguments_raise_only_obelisk_errors_and_leave_every_row_readable(
    opened: OpenStore, name: str, value: Any
) -> None:
    escaped = opened.run(_probe(opened.store, CALLS[name], value))
    assert escaped is None, f"{name}({value!r:.80}) raised {type(escaped).__name__}: {escaped}"
    opened.run(_every_row_reads_back(opened.store))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("list_streams after", "\ud800"),
        ("read_all after", 2**70),
        ("read_stream from_version", 2**70),
        ("append any field", nested(100_000)),
        ("append correlation_id", "a\x00b"),
        ("append expected_version", 2**70),  # on PostgreSQL it failed its whole batch
        ("read_stream from_version", 1.0),  # the memory store sliced with it
    ],
)
def test_each_reported_foreign_exception_is_now_a_validation_error(
    opened: OpenStore, name: str, value: Any
) -> None:
    with pytest.raises(ValidationError):
        opened.run(CALLS[name](opened.store, value))


def test_a_negative_after_reads_from_the_start_on_every_store(opened: OpenStore) -> None:
    async def both() -> tuple[int, int]:
        everything = await opened.store.read_all(limit=10_000, keep_undecodable=True)
        negative = await opened.store.read_all(after=-2, limit=10_000, keep_undecodable=True)
        return len(everything), len(negative)

    everything, negative = opened.run(both())
    assert negative == everything
