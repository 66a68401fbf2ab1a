"""Contract tests for writing: expected versions, results, atomicity, validation, closing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from obelisk.errors import (
    ConcurrencyError,
    InvalidStreamId,
    StoreClosed,
    ValidationError,
)
from obelisk.store.base import EventStore
from obelisk.store.records import (
    ANY,
    MAX_STREAM_ID_LENGTH,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    StoredEvent,
)
from obelisk.testing._contract_base import ContractBase, asyncio_test
from obelisk.testing._events import ContractDeposited, ContractNoted, ContractOpened

__all__ = ["AppendContract", "INVALID_STREAM_IDS", "deposits", "snapshot"]

INVALID_STREAM_IDS: list[object] = [
    "",
    "x" * (MAX_STREAM_ID_LENGTH + 1),
    "account\n1",
    "account\x001",
    "tab\there",
    "\x7f",
    42,
    None,
    b"account-1",
]
"""Stream ids every adapter must refuse with InvalidStreamId before touching storage."""


def deposits(*amounts: int) -> list[ContractDeposited]:
    """One ContractDeposited per amount."""
    return [ContractDeposited(amount=amount) for amount in amounts]


async def snapshot(store: EventStore) -> tuple[int, list[StoredEvent]]:
    """The last position and every stored event: compared before and after a failed write."""
    return await store.last_position(), await ContractBase.everything(store)


class AppendContract(ContractBase):
    """append / append_many: optimistic concurrency, positions, atomicity and validation."""

    # -- trace context -------------------------------------------------------------------

    @asyncio_test
    async def test_the_trace_context_of_an_append_is_stored_with_each_of_its_events(
        self,
    ) -> None:
        one = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        two = "00-" + "3" * 32 + "-" + "4" * 16 + "-00"
        async with self.open_store() as store:
            await store.append_many([AppendRequest("alone", deposits(1), trace_context=one)])
            await store.append_many(
                [
                    AppendRequest("a", deposits(2, 3), NO_STREAM, trace_context=two),
                    AppendRequest("b", deposits(4), NO_STREAM),
                ]
            )
            await asyncio.gather(  # batched where the store batches
                *(store.append_many([AppendRequest(f"c{n}", deposits(n), NO_STREAM,
                                                   trace_context=one)]) for n in range(1, 6))
            )  # fmt: skip
            assert [e.trace_context for e in await store.read_stream("alone")] == [one]
            assert [e.trace_context for e in await store.read_stream("a")] == [two, two]
            assert [e.trace_context for e in await store.read_stream("b")] == [None]
            by_stream = {e.stream_id: e.trace_context for e in await store.read_all()}
            assert [by_stream[f"c{n}"] for n in range(1, 6)] == [one] * 5

    # -- expected versions ---------------------------------------------------------------

    @asyncio_test
    async def test_an_append_with_no_stream_creates_the_stream_at_version_one(self) -> None:
        async with self.open_store() as store:
            result = await store.append("acct-1", [ContractOpened(owner="ada")], NO_STREAM)
            assert result.version == 1
            assert await store.stream_version("acct-1") == 1
            assert self.events_of(await store.read_stream("acct-1")) == [
                ContractOpened(owner="ada")
            ]

    @asyncio_test
    async def test_an_append_at_the_exact_expected_version_succeeds(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", [ContractOpened(owner="ada")], NO_STREAM)
            second = await store.append("acct-1", deposits(5, 6), 1)
            third = await store.append("acct-1", deposits(7), 3)
            assert (second.version, third.version) == (3, 4)
            assert [e.version for e in await store.read_stream("acct-1")] == [1, 2, 3, 4]

    @asyncio_test
    async def test_an_append_with_any_skips_the_version_check(self) -> None:
        async with self.open_store() as store:
            first = await store.append("acct-1", deposits(1), ANY)
            second = await store.append("acct-1", deposits(2, 3), ANY)
            default = await store.append("acct-1", deposits(4))
            assert (first.version, second.version, default.version) == (1, 3, 4)

    @asyncio_test
    async def test_a_stale_expected_version_raises_a_concurrency_error_and_writes_nothing(
        self,
    ) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1, 2), NO_STREAM)
            before = await snapshot(store)
            with pytest.raises(ConcurrencyError) as caught:
                await store.append("acct-1", deposits(3), 1)
            assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
                "acct-1",
                1,
                2,
            )
            assert await snapshot(store) == before
            assert await store.stream_version("acct-1") == 2

    @asyncio_test
    async def test_no_stream_on_an_existing_stream_raises_a_concurrency_error(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            before = await snapshot(store)
            with pytest.raises(ConcurrencyError) as caught:
                await store.append("acct-1", deposits(2), NO_STREAM)
            assert (caught.value.expected, caught.value.actual) == (NO_STREAM, 1)
            assert await snapshot(store) == before

    @asyncio_test
    async def test_an_expected_version_ahead_of_the_stream_raises_a_concurrency_error(
        self,
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(ConcurrencyError) as missing:
                await store.append("acct-1", deposits(1), 1)
            assert missing.value.actual == 0
            created = await store.append("acct-1", deposits(1), NO_STREAM)
            with pytest.raises(ConcurrencyError):
                await store.append("acct-1", deposits(2), 5)
            assert await store.stream_version("acct-1") == 1
            at = self.assert_log_positions(await self.everything(store), 1)
            assert await store.last_position() == at[1] == created.last_position
            assert [s.stream_id for s in await store.list_streams()] == ["acct-1"]

    # -- results and positions -----------------------------------------------------------

    @asyncio_test
    async def test_the_append_result_names_the_stream_version_and_positions_taken(
        self,
    ) -> None:
        async with self.open_store() as store:
            first = await store.append("acct-1", deposits(1, 2, 3), NO_STREAM)
            second = await store.append("acct-2", deposits(4), NO_STREAM)
            third = await store.append("acct-1", deposits(5, 6), 3)
            # at[k] is the k-th event's position: k itself when positions are contiguous.
            at = self.assert_log_positions(await self.everything(store), 6)
            assert first == AppendResult("acct-1", 3, at[1], at[3])
            assert second == AppendResult("acct-2", 1, at[4], at[4])
            assert third == AppendResult("acct-1", 5, at[5], at[6])
            for result, count in ((first, 3), (second, 1), (third, 2)):
                self.assert_append_run([result], [count])
            stored = await store.read_stream("acct-1", from_version=4)
            assert [(e.version, e.position) for e in stored] == [(4, at[5]), (5, at[6])]

    @asyncio_test
    async def test_positions_are_global_contiguous_and_in_commit_order(self) -> None:
        async with self.open_store() as store:
            results = []
            for index in range(12):
                stream = f"acct-{index % 3}"
                results.append(await store.append(stream, deposits(index, index + 100)))
            stored = await self.everything(store)
            at = self.assert_log_positions(stored, 24)
            # Sequential awaits commit in call order, so positions follow it exactly.
            assert [(r.first_position, r.last_position) for r in results] == [
                (at[2 * i + 1], at[2 * i + 2]) for i in range(12)
            ]
            for result in results:
                self.assert_append_run([result], [2])
            assert [e.event for e in stored] == [
                ContractDeposited(amount=a) for i in range(12) for a in (i, i + 100)
            ]
            assert await store.last_position() == at[24]

    # -- append_many ---------------------------------------------------------------------

    @asyncio_test
    async def test_append_many_writes_every_stream_and_answers_in_request_order(
        self,
    ) -> None:
        async with self.open_store() as store:
            await store.append("acct-b", deposits(1), NO_STREAM)
            results = await store.append_many(
                [
                    AppendRequest("acct-c", [ContractOpened(owner="cy")], NO_STREAM),
                    AppendRequest("acct-b", deposits(2, 3), 1),
                    AppendRequest("acct-a", [ContractNoted(text="hi")], ANY),
                ]
            )
            assert [r.stream_id for r in results] == ["acct-c", "acct-b", "acct-a"]
            assert [r.version for r in results] == [1, 3, 1]
            stored = await self.everything(store)
            at = self.assert_log_positions(stored, 5)
            # The parts take one contiguous run of positions, in request order.
            self.assert_append_run(results, [1, 2, 1])
            assert [(r.first_position, r.last_position) for r in results] == [
                (at[2], at[2]),
                (at[3], at[4]),
                (at[5], at[5]),
            ]
            assert [(e.stream_id, e.version) for e in stored] == [
                ("acct-b", 1),
                ("acct-c", 1),
                ("acct-b", 2),
                ("acct-b", 3),
                ("acct-a", 1),
            ]

    @asyncio_test
    async def test_append_many_with_one_stale_part_writes_none_of_the_parts(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            await store.append("acct-2", deposits(2), NO_STREAM)
            before = await snapshot(store)
            with pytest.raises(ConcurrencyError) as caught:
                await store.append_many(
                    [
                        AppendRequest("acct-1", deposits(3), 1),
                        AppendRequest("acct-3", deposits(4), NO_STREAM),
                        AppendRequest("acct-2", deposits(5), 7),
                    ]
                )
            assert caught.value.stream_id == "acct-2"
            assert await snapshot(store) == before
            assert await store.read_stream("acct-3") == []
            assert await store.stream_version("acct-1") == 1
            assert [s.stream_id for s in await store.list_streams()] == ["acct-1", "acct-2"]

    @asyncio_test
    async def test_append_many_with_one_invalid_part_writes_none_of_the_parts(self) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append_many(
                    [
                        AppendRequest("acct-1", deposits(1), NO_STREAM),
                        AppendRequest("acct-2", [], NO_STREAM),
                    ]
                )
            with pytest.raises(InvalidStreamId):
                await store.append_many(
                    [
                        AppendRequest("acct-1", deposits(1), NO_STREAM),
                        AppendRequest("bad\nid", deposits(2), NO_STREAM),
                    ]
                )
            assert await snapshot(store) == (0, [])

    @asyncio_test
    async def test_the_same_stream_twice_in_one_append_many_is_a_validation_error(
        self,
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append_many(
                    [
                        AppendRequest("acct-1", deposits(1), NO_STREAM),
                        AppendRequest("acct-1", deposits(2), 1),
                    ]
                )
            assert await snapshot(store) == (0, [])

    @asyncio_test
    async def test_an_append_many_without_requests_is_a_validation_error(self) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append_many([])
            assert await store.last_position() == 0

    # -- validation ----------------------------------------------------------------------

    @pytest.mark.parametrize("stream_id", INVALID_STREAM_IDS, ids=repr)
    @asyncio_test
    async def test_an_invalid_stream_id_is_refused_on_append_and_nothing_is_written(
        self, stream_id: object
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(InvalidStreamId):
                await store.append(stream_id, deposits(1), NO_STREAM)  # type: ignore[arg-type]
            assert await snapshot(store) == (0, [])
            assert await store.list_streams() == []

    @asyncio_test
    async def test_a_stream_id_of_the_maximum_length_is_accepted(self) -> None:
        longest = "é" * MAX_STREAM_ID_LENGTH  # characters, not bytes, are counted
        async with self.open_store() as store:
            await store.append(longest, deposits(1), NO_STREAM)
            assert [e.stream_id for e in await store.read_stream(longest)] == [longest]

    @asyncio_test
    async def test_an_empty_event_list_is_a_validation_error_and_nothing_is_written(
        self,
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append("acct-1", [], NO_STREAM)
            assert await snapshot(store) == (0, [])
            assert await store.stream_version("acct-1") == 0

    @pytest.mark.parametrize("thing", [{"amount": 1}, "deposited", None, 3], ids=repr)
    @asyncio_test
    async def test_an_object_that_is_not_an_event_is_a_validation_error(
        self, thing: object
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                events: list[Any] = [ContractDeposited(amount=1), thing]
                await store.append("acct-1", events, NO_STREAM)
            assert await snapshot(store) == (0, [])

    @pytest.mark.parametrize("expected", [-2, "1", 1.0, None], ids=repr)
    @asyncio_test
    async def test_an_expected_version_that_is_not_a_version_is_a_validation_error(
        self, expected: object
    ) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append("acct-1", deposits(1), expected)  # type: ignore[arg-type]
            assert await snapshot(store) == (0, [])

    # -- lifecycle -----------------------------------------------------------------------

    @asyncio_test
    async def test_appending_after_close_raises_store_closed(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            await store.close()
            with pytest.raises(StoreClosed):
                await store.append("acct-1", deposits(2), 1)
            with pytest.raises(StoreClosed):
                await store.append_many([AppendRequest("acct-2", deposits(3), NO_STREAM)])

    @asyncio_test
    async def test_reading_after_close_raises_store_closed(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            await store.close()
            with pytest.raises(StoreClosed):
                await store.read_stream("acct-1")
            with pytest.raises(StoreClosed):
                await store.read_all()
            with pytest.raises(StoreClosed):
                await store.last_position()

    @asyncio_test
    async def test_close_is_idempotent(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            await store.close()
            await store.close()
            with pytest.raises(StoreClosed):
                await store.append("acct-1", deposits(2), ANY)

    @asyncio_test
    async def test_open_on_an_open_store_changes_nothing(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            await store.open()
            await store.append("acct-1", deposits(2), 1)
            assert [e.version for e in await store.read_stream("acct-1")] == [1, 2]

    @asyncio_test
    async def test_an_append_that_was_acknowledged_is_readable_at_once(self) -> None:
        # Read-your-writes: a caller that got an AppendResult must see those events on
        # the same store without waiting; projections and the unit of work rely on it.
        async with self.open_store() as store:
            for amount in range(1, 6):
                result = await store.append("acct-1", deposits(amount))
                assert await store.last_position() == result.last_position
                tail = await store.read_all(after=result.first_position - 1)
                assert [e.event for e in tail] == deposits(amount)
