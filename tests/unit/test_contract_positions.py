"""The contract suite against a store whose positions are not contiguous.

A store that takes no global lock (PostgreSQL numbers events ``(transaction id << 16) +
index``) promises positions that are unique, increasing in read order and contiguous
within one append, but not 1..n. ``GappedMemoryEventStore`` numbers a MemoryEventStore
that way, so these tests show three things: the relaxed suite passes for such a store, the
strict suite (memory, SQLite) refuses it, and the relaxed suite still refuses a store that
breaks the promises it does make.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings

from obelisk.store import EventCodec, EventStore, MemoryEventStore
from obelisk.store.base import PreparedAppend
from obelisk.store.records import NO_STREAM, AppendRequest, AppendResult, StoredEvent
from obelisk.testing import (
    ContractDeposited,
    DurableEventStoreContract,
    check_append_run,
    check_log_positions,
    run_store_state_machine,
)

FIRST_TRANSACTION = 700  # far from 1: a real database has used ids before our first append


class GappedMemoryEventStore(MemoryEventStore):
    """A MemoryEventStore numbered like a store without a global lock.

    Every ``append_many`` call is a transaction and takes the next transaction number,
    even when it fails, as a database's transaction ids do. Its events take the positions
    ``(transaction << 16) + index``, the index counting across all its parts. ``stride``
    spaces the events of one append as well: a broken store, for the negative tests.
    """

    def __init__(self, codec: EventCodec | None = None, *, stride: int = 1) -> None:
        super().__init__(codec)
        self._stride = stride
        self._transaction = FIRST_TRANSACTION
        self._index = 0

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        # The parent does not await between its checks and its writes, so no other
        # append can run between resetting the index here and numbering the rows.
        self._transaction += 1
        self._index = 0
        return await super().append_many(requests)

    def _write(self, part: PreparedAppend, now: float) -> AppendResult:
        start = len(self._log)
        result = super()._write(part, now)
        # The rows are shared with the id index, so replays report the new numbers too.
        rows = self._log[start:]
        for row in rows:
            row.position = (self._transaction << 16) + self._index * self._stride
            self._index += 1
        return msgspec.structs.replace(
            result, first_position=rows[0].position, last_position=rows[-1].position
        )

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Iterable[str] | None = None,
        keep_undecodable: bool = False,
    ) -> list[StoredEvent]:
        # The parent slices its log by index: turn the position into that index.
        index = bisect.bisect_right(self._log, after, key=lambda row: row.position)
        return await super().read_all(
            after=index, limit=limit, types=types, keep_undecodable=keep_undecodable
        )

    async def last_position(self) -> int:
        await super().last_position()  # raises StoreClosed like the parent
        return self._log[-1].position if self._log else 0


async def open_gapped(codec: EventCodec | None = None, *, stride: int = 1) -> EventStore:
    store = GappedMemoryEventStore(codec, stride=stride)
    await store.open()
    return store


class GappedContract(DurableEventStoreContract):
    """The whole contract, durable part included, over a gapped store."""

    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        return await open_gapped(codec)

    async def reopen_store(self, store: EventStore) -> EventStore:
        # Memory keeps its rows after close, so reopening the same object is a restart.
        assert isinstance(store, GappedMemoryEventStore)
        await store.open()
        return store


class TestGappedMemoryEventStore(GappedContract):
    """The relaxed suite accepts a faithful non-contiguous store."""

    contiguous_positions = False


class StrictGappedSuite(GappedContract):
    """The default, strict suite over the gapped store: not collected, called by hand."""


class RelaxedBrokenSuite(DurableEventStoreContract):
    """The relaxed suite over a store that spaces the events of one append: not collected."""

    contiguous_positions = False

    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        return await open_gapped(codec, stride=2)

    async def reopen_store(self, store: EventStore) -> EventStore:
        await store.open()
        return store


FAILING_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=10,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the gapped store is what it claims to be ---------------------------------------------


async def test_the_gapped_store_leaves_holes_between_appends_but_not_inside_one() -> None:
    store = await open_gapped()
    first = await store.append("a", [ContractDeposited(amount=1)], NO_STREAM)
    many = await store.append_many(
        [
            AppendRequest("b", [ContractDeposited(amount=2)] * 2, NO_STREAM),
            AppendRequest("c", [ContractDeposited(amount=3)], NO_STREAM),
        ]
    )
    positions = [e.position for e in await store.read_all()]
    await store.close()
    start = (FIRST_TRANSACTION + 1) << 16
    assert first == AppendResult("a", 1, start, start)
    second = (FIRST_TRANSACTION + 2) << 16
    assert many == [
        AppendResult("b", 2, second, second + 1),
        AppendResult("c", 1, second + 2, second + 2),
    ]
    assert positions == [start, second, second + 1, second + 2]


# -- the strict suite refuses it ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "test_the_append_result_names_the_stream_version_and_positions_taken",
        "test_positions_are_global_contiguous_and_in_commit_order",
        "test_append_many_writes_every_stream_and_answers_in_request_order",
        "test_read_all_returns_events_after_a_position_in_position_order",
        "test_read_all_keeps_only_the_listed_types",
        "test_last_position_and_stream_version_follow_appends",
        "test_an_event_of_an_unregistered_type_raises_unknown_event_type",
        "test_concurrent_writers_to_many_streams_fill_every_position_once",
        "test_concurrent_retries_of_one_append_write_it_once",
        "test_acknowledged_events_survive_close_and_reopen",
        "test_appends_in_flight_when_close_is_called_are_committed",
    ],
)
async def test_the_strict_suite_refuses_positions_that_are_not_one_to_n(
    name: str, tmp_path: Path
) -> None:
    suite = StrictGappedSuite()
    suite.tmp_path = tmp_path
    with pytest.raises(AssertionError, match=r"not 1\.\.n"):
        await getattr(suite, name)()


def test_the_strict_state_machine_refuses_positions_that_are_not_one_to_n() -> None:
    with pytest.raises(AssertionError, match=r"not 1\.\.n|leaves a gap"):
        run_store_state_machine(open_gapped, settings=FAILING_SETTINGS)


# -- the relaxed suite still refuses a store that breaks what it promises -----------------


@pytest.mark.parametrize(
    "name",
    [
        "test_the_append_result_names_the_stream_version_and_positions_taken",
        "test_positions_are_global_contiguous_and_in_commit_order",
        "test_append_many_writes_every_stream_and_answers_in_request_order",
        "test_read_all_honours_limit",
        "test_concurrent_writers_to_many_streams_fill_every_position_once",
    ],
)
async def test_the_relaxed_suite_refuses_an_append_that_is_not_one_run(
    name: str, tmp_path: Path
) -> None:
    suite = RelaxedBrokenSuite()
    suite.tmp_path = tmp_path
    with pytest.raises(AssertionError, match=r"consecutive positions|one run"):
        await getattr(suite, name)()


def test_the_relaxed_state_machine_refuses_an_append_that_is_not_one_run() -> None:
    async def broken() -> EventStore:
        return await open_gapped(stride=2)

    with pytest.raises(AssertionError):
        run_store_state_machine(broken, settings=FAILING_SETTINGS, contiguous_positions=False)


# -- the helpers ----------------------------------------------------------------------------


def test_log_positions_one_to_n_pass_both_ways_and_index_from_zero() -> None:
    for contiguous in (True, False):
        assert check_log_positions([1, 2, 3], 3, contiguous=contiguous) == [0, 1, 2, 3]
        assert check_log_positions([], 0, contiguous=contiguous) == [0]


def test_log_positions_with_holes_fail_only_when_contiguity_is_promised() -> None:
    gapped = [5 << 16, 9 << 16, (9 << 16) + 1]
    assert check_log_positions(gapped, 3, contiguous=False) == [0, *gapped]
    with pytest.raises(AssertionError, match=r"not 1\.\.n"):
        check_log_positions(gapped, 3, contiguous=True)
    with pytest.raises(AssertionError, match=r"not 1\.\.n"):
        check_log_positions([2, 3, 4], 3, contiguous=True)


@pytest.mark.parametrize(
    ("positions", "count", "message"),
    [
        ([10, 20, 20], 3, "strictly increasing"),
        ([10, 30, 20], 3, "strictly increasing"),
        ([0, 1, 2], 3, ">= 1"),
        ([10, 20], 3, "3 events appended"),
        ([10, 20, 30, 40], 3, "3 events appended"),
    ],
)
def test_log_positions_that_repeat_go_back_or_miss_events_always_fail(
    positions: list[int], count: int, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        check_log_positions(positions, count, contiguous=False)


def test_an_append_run_must_be_consecutive_across_parts_in_request_order() -> None:
    check_append_run([AppendResult("a", 2, 100, 101), AppendResult("b", 1, 102, 102)], [2, 1])
    with pytest.raises(AssertionError, match="consecutive positions"):
        check_append_run([AppendResult("a", 2, 100, 102)], [2])
    with pytest.raises(AssertionError, match="one run"):
        check_append_run([AppendResult("a", 1, 100, 100), AppendResult("b", 1, 105, 105)], [1, 1])
    with pytest.raises(AssertionError, match="one run"):
        check_append_run([AppendResult("a", 1, 101, 101), AppendResult("b", 1, 100, 100)], [1, 1])
