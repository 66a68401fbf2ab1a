"""Bulk import (COPY) into PostgresEventStore, on a real server.

An import keeps the order it was given: positions increase in import order, each stream's
versions continue its head without a hole, expected versions are checked as for appends,
and a failing chunk is rolled back whole while earlier chunks stay committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from obelisk.domain.events import Event
from obelisk.errors import ConcurrencyError, ValidationError
from obelisk.store import ANY, NO_STREAM, AppendRequest, AppendResult, StoredEvent
from obelisk.store._pg_schema import INDEX_BITS
from obelisk.store.postgres import ImportResult, ImportStopped, PostgresEventStore


class PgImportNoted(Event):
    event_type = "test_postgres_import.Noted"
    n: int


def _notes(*numbers: int) -> list[Event]:
    return [PgImportNoted(n=n) for n in numbers]


@pytest.fixture
async def store(
    postgres_dsn: str, pg_schema: str, loop_errors: list[object]
) -> AsyncIterator[PostgresEventStore]:
    async with PostgresEventStore(
        postgres_dsn, schema=pg_schema, pool_min_size=1, pool_max_size=4
    ) as opened:
        yield opened


def _assert_consistent(events: list[StoredEvent]) -> None:
    """Positions strictly increase and every stream's versions run 1, 2, ... in that order."""
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))
    versions: dict[str, int] = {}
    for e in events:
        versions[e.stream_id] = versions.get(e.stream_id, 0) + 1
        assert e.version == versions[e.stream_id], e


def _numbers(events: list[StoredEvent]) -> list[int]:
    numbers = []
    for e in events:
        assert isinstance(e.event, PgImportNoted)
        numbers.append(e.event.n)
    return numbers


async def test_an_import_keeps_its_order_and_continues_existing_streams(
    store: PostgresEventStore,
) -> None:
    existing = await store.append("imp-a", _notes(1, 2), NO_STREAM)
    result = await store.import_events(
        [
            AppendRequest("imp-a", _notes(3, 4), expected_version=2),
            AppendRequest("imp-b", _notes(5, 6, 7), expected_version=NO_STREAM, stream_type="B"),
            AppendRequest("imp-a", _notes(8), expected_version=4, correlation_id="corr"),
            AppendRequest("imp-c", _notes(9), expected_version=ANY),
        ]
    )
    events = await store.read_all()
    _assert_consistent(events)
    assert _numbers(events) == list(range(1, 10))
    imported = events[2:]
    assert imported[0].position > existing.last_position
    assert [(e.stream_id, e.version) for e in imported] == [
        ("imp-a", 3), ("imp-a", 4), ("imp-b", 1), ("imp-b", 2), ("imp-b", 3),
        ("imp-a", 5), ("imp-c", 1),
    ]  # fmt: skip
    assert imported[5].correlation_id == "corr"
    assert result == ImportResult(
        events=7, appends=4, transactions=1, last_position=events[-1].position
    )
    assert await store.stream_version("imp-a") == 5
    assert await store.stream_version("imp-b") == 3
    assert {(s.stream_id, s.stream_type) for s in await store.list_streams()} >= {("imp-b", "B")}
    # Appends after the import continue the heads it left.
    after = await store.append("imp-a", _notes(10), expected_version=5)
    assert after.version == 6
    assert after.first_position > result.last_position


async def test_a_conflict_mid_import_rolls_back_only_its_chunk(
    store: PostgresEventStore,
) -> None:
    await store.append("imp-taken", _notes(0), NO_STREAM)
    # Chunks of 3 events: [1 2 3] [4 5 6] [7 8 <conflict>] — the third is rolled back.
    requests = [AppendRequest(f"imp-{n}", _notes(n), NO_STREAM) for n in range(1, 9)]
    requests.append(AppendRequest("imp-taken", _notes(9), expected_version=NO_STREAM))
    requests.append(AppendRequest("imp-never", _notes(10), NO_STREAM))

    with pytest.raises(ImportStopped) as stopped:
        await store.import_events(requests, chunk_events=3)

    events = await store.read_all()
    _assert_consistent(events)
    assert _numbers(events) == [0, 1, 2, 3, 4, 5, 6]
    assert stopped.value.committed == ImportResult(
        events=6, appends=6, transactions=2, last_position=events[-1].position
    )
    cause = stopped.value.__cause__
    assert isinstance(cause, ConcurrencyError)
    assert (cause.stream_id, cause.expected, cause.actual) == ("imp-taken", NO_STREAM, 1)
    # Heads of the rolled-back chunk are untouched: no placeholder is left behind.
    for stream in ("imp-7", "imp-8", "imp-never"):
        assert await store.stream_version(stream) == 0
    assert {s.stream_id for s in await store.list_streams(limit=100)} == {
        "imp-taken",
        *(f"imp-{n}" for n in range(1, 7)),
    }
    assert await store.append("imp-7", _notes(7), NO_STREAM)


async def test_chunk_events_splits_an_import_into_several_transactions(
    store: PostgresEventStore,
) -> None:
    requests = [AppendRequest("imp-chunked", _notes(n)) for n in range(10)]
    result = await store.import_events(requests, chunk_events=4)

    events = await store.read_stream("imp-chunked")
    assert _numbers(events) == list(range(10))
    assert [e.version for e in events] == list(range(1, 11))
    assert result == ImportResult(10, 10, 3, events[-1].position)
    # A position's high bits are its transaction's id: 4 + 4 + 2 events in three.
    transactions = [e.position >> INDEX_BITS for e in events]
    assert [transactions.count(t) for t in sorted(set(transactions))] == [4, 4, 2]


async def test_an_import_accepts_an_async_iterable(store: PostgresEventStore) -> None:
    async def produce() -> AsyncIterator[AppendRequest]:
        for n in range(6):
            await asyncio.sleep(0)
            yield AppendRequest(f"imp-async-{n % 2}", _notes(n))

    result = await store.import_events(produce(), chunk_events=4)

    events = await store.read_all()
    _assert_consistent(events)
    assert _numbers(events) == list(range(6))
    assert (result.events, result.appends, result.transactions) == (6, 6, 2)


async def test_an_import_refuses_a_bad_chunk_size_and_an_append_bigger_than_a_chunk(
    store: PostgresEventStore,
) -> None:
    with pytest.raises(ValidationError):
        await store.import_events([AppendRequest("imp-x", _notes(1))], chunk_events=0)
    with pytest.raises(ImportStopped) as stopped:
        await store.import_events(
            [AppendRequest("imp-ok", _notes(1)), AppendRequest("imp-big", _notes(1, 2, 3))],
            chunk_events=2,
        )
    assert isinstance(stopped.value.__cause__, ValidationError)
    # The oversized append belongs to the chunk at hand: that chunk is not written at all.
    assert stopped.value.committed == ImportResult(0, 0, 0, 0)
    assert await store.stream_version("imp-ok") == 0
    assert await store.stream_version("imp-big") == 0


async def test_an_import_running_with_appends_to_other_streams_keeps_both_correct(
    store: PostgresEventStore,
) -> None:
    def imported() -> Iterator[AppendRequest]:
        for n in range(3000):
            yield AppendRequest(f"imp-bulk-{n % 30}", _notes(n))

    async def appender(i: int) -> list[AppendResult]:
        results = []
        for n in range(25):
            results.append(await store.append(f"imp-live-{i}", _notes(n), expected_version=n))
        return results

    outcome = await asyncio.gather(
        store.import_events(imported(), chunk_events=500),
        *(appender(i) for i in range(4)),
    )
    result = outcome[0]
    assert isinstance(result, ImportResult)
    assert (result.events, result.transactions) == (3000, 6)

    events = await store.read_all(limit=10_000)
    _assert_consistent(events)
    assert len(events) == 3000 + 4 * 25
    bulk = [e for e in events if e.stream_id.startswith("imp-bulk-")]
    assert _numbers(bulk) == list(range(3000))
    by_position = {e.position: e for e in events}
    for i, results in enumerate(outcome[1:]):
        assert isinstance(results, list)
        for n, appended in enumerate(results):
            stored = by_position[appended.first_position]
            assert (stored.stream_id, stored.version) == (f"imp-live-{i}", n + 1)
            assert stored.event == PgImportNoted(n=n)
