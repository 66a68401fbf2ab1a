"""Contract tests for idempotent appends: a retry with the same event ids is a no-op."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from obelisk.errors import ConcurrencyError, IdempotencyConflict, ValidationError
from obelisk.store.records import ANY, NO_STREAM, AppendRequest
from obelisk.testing._contract_appends import deposits, snapshot
from obelisk.testing._contract_base import ContractBase, asyncio_test

__all__ = ["IdempotencyContract", "new_ids"]


def new_ids(count: int) -> list[UUID]:
    """``count`` fresh event ids."""
    return [uuid4() for _ in range(count)]


class IdempotencyContract(ContractBase):
    """Retries by event id return the first result; reused ids are refused."""

    @asyncio_test
    async def test_a_retried_append_returns_the_first_result_and_writes_nothing(
        self,
    ) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            ids = new_ids(2)
            first = await store.append("acct-1", deposits(2, 3), 1, event_ids=ids)
            await store.append("acct-2", deposits(4), NO_STREAM)
            before = await snapshot(store)
            # The retry's expected version is now stale: the replay must win over the check,
            # or a client whose acknowledgement was lost could never confirm its append.
            retry = await store.append("acct-1", deposits(2, 3), 1, event_ids=ids)
            assert retry == first
            assert await snapshot(store) == before

    @asyncio_test
    async def test_a_retry_with_no_stream_returns_the_first_result(self) -> None:
        async with self.open_store() as store:
            ids = new_ids(3)
            first = await store.append("acct-1", deposits(1, 2, 3), NO_STREAM, event_ids=ids)
            before = await snapshot(store)
            for expected in (NO_STREAM, ANY, 7):
                retry = await store.append("acct-1", deposits(1, 2, 3), expected, event_ids=ids)
                assert retry == first
            assert await snapshot(store) == before
            assert await store.stream_version("acct-1") == 3

    @asyncio_test
    async def test_a_retried_multi_stream_append_returns_every_first_result(self) -> None:
        async with self.open_store() as store:
            requests = [
                AppendRequest("acct-1", deposits(1), NO_STREAM, event_ids=new_ids(1)),
                AppendRequest("acct-2", deposits(2, 3), NO_STREAM, event_ids=new_ids(2)),
            ]
            first = await store.append_many(requests)
            await store.append("acct-1", deposits(4), 1)
            before = await snapshot(store)
            assert await store.append_many(requests) == first
            assert await snapshot(store) == before

    @asyncio_test
    async def test_a_retry_that_is_a_stale_new_append_is_still_a_concurrency_error(
        self,
    ) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            before = await snapshot(store)
            # Ids never stored: this is a new append, and its expected version counts.
            with pytest.raises(ConcurrencyError):
                await store.append("acct-1", deposits(2), NO_STREAM, event_ids=new_ids(1))
            assert await snapshot(store) == before

    @asyncio_test
    async def test_given_event_ids_are_the_stored_event_ids(self) -> None:
        async with self.open_store() as store:
            ids = new_ids(2)
            await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=ids)
            assert [e.event_id for e in await store.read_stream("acct-1")] == ids

    @asyncio_test
    async def test_reusing_event_ids_in_another_stream_raises_an_idempotency_conflict(
        self,
    ) -> None:
        async with self.open_store() as store:
            ids = new_ids(2)
            await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=ids)
            before = await snapshot(store)
            with pytest.raises(IdempotencyConflict):
                await store.append("acct-2", deposits(1, 2), NO_STREAM, event_ids=ids)
            assert await snapshot(store) == before
            assert await store.stream_version("acct-2") == 0

    @asyncio_test
    async def test_stored_ids_followed_by_new_ids_raise_an_idempotency_conflict(
        self,
    ) -> None:
        async with self.open_store() as store:
            ids = new_ids(2)
            await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=ids)
            before = await snapshot(store)
            with pytest.raises(IdempotencyConflict):
                await store.append("acct-1", deposits(1, 2, 3), ANY, event_ids=[*ids, uuid4()])
            assert await snapshot(store) == before

    @asyncio_test
    async def test_new_ids_followed_by_stored_ids_raise_an_idempotency_conflict(
        self,
    ) -> None:
        async with self.open_store() as store:
            ids = new_ids(2)
            await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=ids)
            before = await snapshot(store)
            with pytest.raises(IdempotencyConflict):
                await store.append("acct-1", deposits(0, 1, 2), ANY, event_ids=[uuid4(), *ids])
            assert await snapshot(store) == before

    @asyncio_test
    async def test_a_subset_of_a_stored_append_is_an_idempotency_conflict(self) -> None:
        async with self.open_store() as store:
            ids = new_ids(3)
            await store.append("acct-1", deposits(1, 2, 3), NO_STREAM, event_ids=ids)
            before = await snapshot(store)
            with pytest.raises(IdempotencyConflict):
                # Versions 1 and 3: stored, in this stream, but not consecutive.
                await store.append("acct-1", deposits(1, 3), ANY, event_ids=[ids[0], ids[2]])
            assert await snapshot(store) == before

    @asyncio_test
    async def test_one_event_id_in_two_parts_of_one_append_is_refused(self) -> None:
        async with self.open_store() as store:
            shared = uuid4()
            with pytest.raises((IdempotencyConflict, ValidationError)):
                await store.append_many(
                    [
                        AppendRequest("acct-1", deposits(1), NO_STREAM, event_ids=[shared]),
                        AppendRequest("acct-2", deposits(2), NO_STREAM, event_ids=[shared]),
                    ]
                )
            assert await snapshot(store) == (0, [])

    @asyncio_test
    async def test_an_event_id_repeated_within_one_append_is_a_validation_error(
        self,
    ) -> None:
        async with self.open_store() as store:
            same = uuid4()
            with pytest.raises(ValidationError):
                await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=[same, same])
            assert await snapshot(store) == (0, [])

    @pytest.mark.parametrize("count", [1, 3])
    @asyncio_test
    async def test_a_wrong_number_of_event_ids_is_a_validation_error(self, count: int) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append("acct-1", deposits(1, 2), NO_STREAM, event_ids=new_ids(count))
            assert await snapshot(store) == (0, [])

    @asyncio_test
    async def test_event_ids_that_are_not_uuids_are_a_validation_error(self) -> None:
        async with self.open_store() as store:
            with pytest.raises(ValidationError):
                await store.append(
                    "acct-1",
                    deposits(1),
                    NO_STREAM,
                    event_ids=[str(uuid4())],  # type: ignore[list-item]
                )
            assert await snapshot(store) == (0, [])
