"""Contract tests for the snapshot half of the EventStore port."""

from __future__ import annotations

import asyncio

import pytest

from obelisk.errors import InvalidStreamId, StoreClosed, ValidationError
from obelisk.store.records import NO_STREAM, Snapshot
from obelisk.testing._contract_appends import deposits
from obelisk.testing._contract_base import ContractBase, asyncio_test
from obelisk.testing._events import ContractOpened

__all__ = ["SnapshotContract"]


def snap(stream_id: str, version: int, state: bytes = b"state", schema: int = 1) -> Snapshot:
    """A snapshot of an aggregate type the contract uses throughout."""
    return Snapshot(stream_id, version, "ContractAccount", schema, state, 1_700_000_000.5)


class SnapshotContract(ContractBase):
    """Snapshots: one per stream, the newest kept, sizes listed for tools."""

    @asyncio_test
    async def test_a_saved_snapshot_loads_back_exactly(self) -> None:
        async with self.open_store() as store:
            assert await store.load_snapshot("acct-1") is None
            saved = snap("acct-1", 3, b"\x00\xffbinary state", schema=2)
            await store.save_snapshots([saved])
            assert await store.load_snapshot("acct-1") == saved
            assert await store.load_snapshot("acct-2") is None

    @asyncio_test
    async def test_a_newer_snapshot_replaces_an_older_one_and_never_the_reverse(self) -> None:
        async with self.open_store() as store:
            await store.save_snapshots([snap("acct-1", 5, b"five")])
            await store.save_snapshots([snap("acct-1", 3, b"three")])
            assert await store.load_snapshot("acct-1") == snap("acct-1", 5, b"five")
            await store.save_snapshots([snap("acct-1", 9, b"nine")])
            assert await store.load_snapshot("acct-1") == snap("acct-1", 9, b"nine")
            # The same version again (say, under a new state schema) replaces it.
            await store.save_snapshots([snap("acct-1", 9, b"nine-v2", schema=2)])
            assert await store.load_snapshot("acct-1") == snap("acct-1", 9, b"nine-v2", 2)

    @asyncio_test
    async def test_one_call_saves_many_streams_and_keeps_the_newest_of_a_repeated_one(
        self,
    ) -> None:
        async with self.open_store() as store:
            await store.save_snapshots(
                [snap("a", 2), snap("b", 4), snap("a", 7, b"later"), snap("a", 3)]
            )
            assert await store.load_snapshot("a") == snap("a", 7, b"later")
            assert await store.load_snapshot("b") == snap("b", 4)

    @asyncio_test
    async def test_concurrent_saves_of_one_stream_end_with_the_newest(self) -> None:
        async with self.open_store() as store:
            await asyncio.gather(
                *(store.save_snapshots([snap("hot", v, str(v).encode())]) for v in range(1, 21))
            )
            assert await store.load_snapshot("hot") == snap("hot", 20, b"20")

    @asyncio_test
    async def test_delete_removes_only_the_snapshot_at_that_version(self) -> None:
        async with self.open_store() as store:
            await store.save_snapshots([snap("acct-1", 5)])
            await store.delete_snapshot("acct-1", 4)  # another version: kept
            assert await store.load_snapshot("acct-1") == snap("acct-1", 5)
            await store.delete_snapshot("acct-1", 5)
            assert await store.load_snapshot("acct-1") is None
            await store.delete_snapshot("acct-1", 5)  # nothing left: no error
            # Once deleted, an older snapshot may be saved again.
            await store.save_snapshots([snap("acct-1", 2)])
            assert await store.load_snapshot("acct-1") == snap("acct-1", 2)

    @asyncio_test
    async def test_malformed_snapshots_are_refused_and_nothing_is_saved(self) -> None:
        async with self.open_store() as store:
            bad = [
                Snapshot("acct-1", 0, "ContractAccount", 1, b"s", 0.0),
                Snapshot("acct-1", 2, "", 1, b"s", 0.0),
                Snapshot("acct-1", 2, "ContractAccount", 1, "text", 0.0),  # type: ignore[arg-type]
                Snapshot("acct-1", True, "ContractAccount", 1, b"s", 0.0),
            ]
            for snapshot in bad:
                with pytest.raises(ValidationError):
                    await store.save_snapshots([snap("other", 1), snapshot])
            with pytest.raises(InvalidStreamId):
                await store.save_snapshots([snap("", 1)])
            with pytest.raises(InvalidStreamId):
                await store.load_snapshot("bad\nid")
            # A refused call wrote nothing, not even its valid snapshots.
            assert await store.load_snapshot("other") is None
            assert await store.load_snapshot("acct-1") is None

    @asyncio_test
    async def test_stream_sizes_list_the_largest_streams_with_bytes_and_snapshot(self) -> None:
        async with self.open_store() as store:
            await store.append("small", deposits(1), NO_STREAM)
            await store.append(
                "big", [ContractOpened(owner="ada"), *deposits(1, 2, 3)], NO_STREAM,
                stream_type="ContractAccount",
            )  # fmt: skip
            await store.append("mid", deposits(10, 20), NO_STREAM)
            await store.save_snapshots([snap("big", 3)])
            sizes = await store.stream_sizes(limit=2)
            assert [(s.stream_id, s.events, s.snapshot_version) for s in sizes] == [
                ("big", 4, 3),
                ("mid", 2, None),
            ]
            assert sizes[0].stream_type == "ContractAccount"
            big = await store.read_stream("big")
            assert sizes[0].data_bytes > 0
            assert sizes[0].data_bytes == sum(
                len(store.codec.encode(e.event)) for e in big
            )
            assert len(await store.stream_sizes()) == 3
            assert await store.stream_sizes(limit=0) == []
            with pytest.raises(ValidationError):
                await store.stream_sizes(limit=-1)

    @asyncio_test
    async def test_snapshot_calls_on_a_closed_store_raise_store_closed(self) -> None:
        async with self.open_store() as store:
            pass
        with pytest.raises(StoreClosed):
            await store.save_snapshots([snap("acct-1", 1)])
        with pytest.raises(StoreClosed):
            await store.load_snapshot("acct-1")
