"""Contract tests for reading: ranges, the global log, stream listing, envelopes, upcasting."""

from __future__ import annotations

import time
from uuid import UUID, uuid4

import pytest

from obelisk.domain.events import EventRegistry, default_registry
from obelisk.errors import InvalidStreamId, UnknownEventType, ValidationError
from obelisk.store.codec import JsonCodec
from obelisk.store.records import ANY, NO_STREAM, AppendRequest, StreamInfo
from obelisk.testing._contract_appends import INVALID_STREAM_IDS, deposits
from obelisk.testing._contract_base import ContractBase, asyncio_test
from obelisk.testing._events import (
    AliasRegistry,
    ContractNoted,
    ContractOpened,
    ContractRenamedV1,
    ContractRenamedV2,
)

__all__ = ["ReadContract"]


class ReadContract(ContractBase):
    """read_stream, read_stream_events, read_all, last_position, stream_version, list_streams."""

    @asyncio_test
    async def test_read_stream_returns_one_stream_oldest_first_with_envelopes(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", [ContractOpened(owner="ada")], NO_STREAM)
            await store.append("acct-2", deposits(9), NO_STREAM)
            await store.append("acct-1", deposits(1, 2), 1)
            stored = await store.read_stream("acct-1")
            at = self.assert_log_positions(await self.everything(store), 4)
            assert [(e.stream_id, e.version, e.position) for e in stored] == [
                ("acct-1", 1, at[1]),
                ("acct-1", 2, at[3]),
                ("acct-1", 3, at[4]),
            ]
            assert self.events_of(stored) == [ContractOpened(owner="ada"), *deposits(1, 2)]
            assert [e.event_type for e in stored] == [
                "obelisk.testing.Opened",
                "obelisk.testing.Deposited",
                "obelisk.testing.Deposited",
            ]

    @asyncio_test
    async def test_envelopes_carry_the_aggregate_type_the_append_named(self) -> None:
        async with self.open_store() as store:
            await store.append(
                "typed-1", [ContractOpened(owner="ada")], NO_STREAM, stream_type="Account"
            )
            await store.append("untyped-1", [ContractOpened(owner="bob")], NO_STREAM)
            await store.append("typed-1", deposits(1, 2), 1, stream_type="Account")
            by_stream = {e.stream_id: e for e in await self.everything(store)}
            assert by_stream["untyped-1"].stream_type is None
            stored = await store.read_stream("typed-1")
            # The first event carries it; stores may repeat it on later ones (the memory
            # store does), so readers that need it look at a stream's first event.
            assert stored[0].stream_type == "Account"
            assert all(e.stream_type in ("Account", None) for e in stored[1:])

    @asyncio_test
    async def test_last_position_of_finds_stored_event_ids_only(self) -> None:
        async with self.open_store() as store:
            ids = [uuid4(), uuid4()]
            await store.append("ids-1", deposits(1, 2), NO_STREAM, event_ids=ids)
            await store.append("ids-2", deposits(1), NO_STREAM)
            at = self.assert_log_positions(await self.everything(store), 3)
            assert await store.last_position_of(ids) == at[2]
            assert await store.last_position_of([ids[0], uuid4()]) == at[1]
            assert await store.last_position_of([uuid4()]) is None
            assert await store.last_position_of([]) is None

    @asyncio_test
    async def test_a_negative_read_limit_is_a_validation_error(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1, 2), NO_STREAM)
            with pytest.raises(ValidationError):
                await store.read_stream("acct-1", limit=-1)
            with pytest.raises(ValidationError):
                await store.read_all(after=0, limit=-1)
            assert len(await store.read_all(after=0, limit=0)) == 0

    @asyncio_test
    async def test_read_stream_honours_from_version_to_version_and_limit(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(*range(1, 11)), NO_STREAM)

            async def versions(**window: int) -> list[int]:
                return [e.version for e in await store.read_stream("acct-1", **window)]

            assert await versions(from_version=4) == [4, 5, 6, 7, 8, 9, 10]
            assert await versions(to_version=3) == [1, 2, 3]
            assert await versions(from_version=3, to_version=5) == [3, 4, 5]
            assert await versions(limit=2) == [1, 2]
            assert await versions(from_version=6, limit=3) == [6, 7, 8]
            assert await versions(from_version=6, to_version=7, limit=5) == [6, 7]
            assert await versions(from_version=11) == []
            assert await versions(from_version=5, to_version=4) == []
            assert await versions(to_version=99) == list(range(1, 11))
            assert await versions(from_version=0, to_version=2) == [1, 2]
            assert await versions(limit=0) == []

    @asyncio_test
    async def test_read_stream_events_returns_the_same_events_as_read_stream(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", [ContractOpened(owner="bo")], NO_STREAM)
            await store.append("acct-1", [*deposits(3, 4), ContractNoted(text="x")], 1)
            await store.append("acct-2", deposits(5), NO_STREAM)
            for window in (
                {},
                {"from_version": 2},
                {"to_version": 2},
                {"from_version": 2, "to_version": 3},
            ):
                envelopes = await store.read_stream("acct-1", **window)
                events = await store.read_stream_events("acct-1", **window)
                assert events == self.events_of(envelopes)
                assert events, window

    @asyncio_test
    async def test_a_stream_that_does_not_exist_reads_as_empty_at_version_zero(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            assert await store.read_stream("acct-2") == []
            assert await store.read_stream_events("acct-2") == []
            assert await store.stream_version("acct-2") == 0

    @pytest.mark.parametrize("stream_id", INVALID_STREAM_IDS, ids=repr)
    @asyncio_test
    async def test_an_invalid_stream_id_is_refused_on_read(self, stream_id: object) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1), NO_STREAM)
            with pytest.raises(InvalidStreamId):
                await store.read_stream(stream_id)  # type: ignore[arg-type]
            with pytest.raises(InvalidStreamId):
                await store.read_stream_events(stream_id)  # type: ignore[arg-type]
            with pytest.raises(InvalidStreamId):
                await store.stream_version(stream_id)  # type: ignore[arg-type]
            at = self.assert_log_positions(await self.everything(store), 1)
            assert await store.last_position() == at[1]

    @asyncio_test
    async def test_read_all_returns_events_after_a_position_in_position_order(self) -> None:
        async with self.open_store() as store:
            for index in range(6):
                await store.append(f"acct-{index % 2}", deposits(index))
            everything = await store.read_all()
            at = self.assert_log_positions(everything, 6)
            assert self.events_of(everything) == deposits(0, 1, 2, 3, 4, 5)
            assert [e.position for e in await store.read_all(after=at[4])] == [at[5], at[6]]
            assert await store.read_all(after=at[6]) == []
            assert await store.read_all(after=at[4]) == everything[4:]
            # Any event's position pages on to exactly the events after it.
            for index in range(7):
                assert await store.read_all(after=at[index]) == everything[index:]

    @asyncio_test
    async def test_read_all_honours_limit(self) -> None:
        async with self.open_store() as store:
            result = await store.append("acct-1", deposits(*range(10)), NO_STREAM)
            self.assert_append_run([result], [10])
            pages = await self.everything(store)
            at = self.assert_log_positions(pages, 10)
            assert [e.position for e in await store.read_all(limit=3)] == at[1:4]
            assert [e.position for e in await store.read_all(after=at[8], limit=3)] == at[9:]
            assert await store.read_all(limit=0) == []
            assert at[1:] == list(range(result.first_position, result.last_position + 1))

    @asyncio_test
    async def test_read_all_keeps_only_the_listed_types(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", [ContractOpened(owner="a"), *deposits(1)], NO_STREAM)
            await store.append("acct-2", [ContractNoted(text="n1"), *deposits(2)], NO_STREAM)
            await store.append("acct-1", [ContractNoted(text="n2"), *deposits(3)], 2)
            at = self.assert_log_positions(await self.everything(store), 6)
            noted = await store.read_all(types=["obelisk.testing.Noted"])
            assert [(e.position, e.event) for e in noted] == [
                (at[3], ContractNoted(text="n1")),
                (at[5], ContractNoted(text="n2")),
            ]
            both = await store.read_all(
                types={"obelisk.testing.Noted", "obelisk.testing.Opened"}, after=at[1]
            )
            assert [e.position for e in both] == [at[3], at[5]]
            # limit counts the events returned, not the events scanned.
            first_deposit = await store.read_all(types=("obelisk.testing.Deposited",), limit=1)
            assert [e.position for e in first_deposit] == [at[2]]
            assert await store.read_all(types=["obelisk.testing.Nothing"]) == []
            assert await store.read_all(types=[]) == []

    @asyncio_test
    async def test_last_position_and_stream_version_follow_appends(self) -> None:
        async with self.open_store() as store:
            assert await store.last_position() == 0
            await store.append("acct-1", deposits(1, 2), NO_STREAM)
            await store.append("acct-2", deposits(3), NO_STREAM)
            last = await store.append("acct-1", deposits(4), ANY)
            at = self.assert_log_positions(await self.everything(store), 4)
            assert await store.last_position() == at[4] == last.last_position
            assert await store.stream_version("acct-1") == 3
            assert await store.stream_version("acct-2") == 1

    @asyncio_test
    async def test_list_streams_reports_id_type_version_and_count_ordered_by_id(self) -> None:
        async with self.open_store() as store:
            await store.append("b-2", deposits(1, 2), NO_STREAM, stream_type="Account")
            await store.append("a-1", deposits(3), NO_STREAM)
            await store.append_many(
                [
                    AppendRequest("c-3", deposits(4), NO_STREAM, stream_type="Ledger"),
                    AppendRequest("b-2", deposits(5), 2, stream_type="Ignored"),
                ]
            )
            # The type is recorded when a stream starts; later appends do not change it.
            assert await store.list_streams() == [
                StreamInfo("a-1", None, 1, 1),
                StreamInfo("b-2", "Account", 3, 3),
                StreamInfo("c-3", "Ledger", 1, 1),
            ]

    @asyncio_test
    async def test_list_streams_pages_with_after_and_limit(self) -> None:
        async with self.open_store() as store:
            names = [f"s-{index:02d}" for index in range(7)]
            for name in reversed(names):
                await store.append(name, deposits(1), NO_STREAM)
            assert [s.stream_id for s in await store.list_streams(limit=3)] == names[:3]
            page = await store.list_streams(after="s-02", limit=3)
            assert [s.stream_id for s in page] == names[3:6]
            assert [s.stream_id for s in await store.list_streams(after="s-05")] == ["s-06"]
            assert await store.list_streams(after="s-06") == []
            # ``after`` need not be a stored id: it is a bound in id order.
            assert [s.stream_id for s in await store.list_streams(after="s-035")] == names[4:]

    # -- envelopes -----------------------------------------------------------------------

    @asyncio_test
    async def test_generated_event_ids_are_distinct_uuids(self) -> None:
        async with self.open_store() as store:
            await store.append("acct-1", deposits(1, 2, 3), NO_STREAM)
            await store.append("acct-2", deposits(4), NO_STREAM)
            ids = [e.event_id for e in await store.read_all()]
            assert all(isinstance(event_id, UUID) for event_id in ids)
            assert len(set(ids)) == 4

    @asyncio_test
    async def test_event_ids_correlation_and_causation_round_trip_in_every_envelope(
        self,
    ) -> None:
        async with self.open_store() as store:
            ids = [uuid4(), uuid4()]
            await store.append(
                "acct-1",
                deposits(1, 2),
                NO_STREAM,
                event_ids=ids,
                correlation_id="corr-7",
                causation_id="cmd-3",
            )
            await store.append("acct-1", deposits(3), 2)
            stored = await store.read_stream("acct-1")
            assert [e.event_id for e in stored[:2]] == ids
            assert [(e.correlation_id, e.causation_id) for e in stored] == [
                ("corr-7", "cmd-3"),
                ("corr-7", "cmd-3"),
                (None, None),
            ]
            assert await store.read_all() == stored

    @asyncio_test
    async def test_recorded_at_is_the_wall_clock_time_of_the_append(self) -> None:
        async with self.open_store() as store:
            # A one-second margin absorbs clock adjustments; this checks the unit and the
            # epoch (seconds since 1970), not how fast the append was.
            before = time.time() - 1.0
            await store.append("acct-1", deposits(1, 2), NO_STREAM)
            after = time.time() + 1.0
            stamps = [e.recorded_at for e in await store.read_stream("acct-1")]
            assert all(isinstance(stamp, float) for stamp in stamps)
            assert all(before <= stamp <= after for stamp in stamps), (before, stamps, after)

    # -- codecs --------------------------------------------------------------------------

    @asyncio_test
    async def test_an_event_stored_at_an_old_schema_version_is_upcast_on_read(self) -> None:
        # The codec reads rows named "obelisk.testing.Renamed" (written by the v1 class)
        # into the v2 class, as after a deploy that bumped schema_version.
        registry = AliasRegistry(
            {ContractRenamedV1.event_type: ContractRenamedV2}, default_registry
        )
        async with self.open_store(codec=JsonCodec(registry)) as store:
            await store.append(
                "person-1", [ContractRenamedV1(name="Ada Lovelace"), *deposits(1)], NO_STREAM
            )
            expected = [ContractRenamedV2(first="Ada", last="Lovelace"), *deposits(1)]
            assert self.events_of(await store.read_stream("person-1")) == expected
            assert await store.read_stream_events("person-1") == expected
            assert self.events_of(await store.read_all()) == expected

    @asyncio_test
    async def test_an_event_of_an_unregistered_type_raises_unknown_event_type(self) -> None:
        # An empty registry knows no class, like a reader deployed without the event class.
        async with self.open_store(codec=JsonCodec(EventRegistry())) as store:
            written = await store.append("acct-1", [ContractNoted(text="lost")], NO_STREAM)
            # read_all cannot decode this log, so the position comes from the append result.
            if self.contiguous_positions:
                assert written.first_position == 1, f"positions are not 1..n: {written}"
            with pytest.raises(UnknownEventType) as caught:
                await store.read_stream("acct-1")
            assert (caught.value.type_name, caught.value.stream_id) == (
                "obelisk.testing.Noted",
                "acct-1",
            )
            assert (caught.value.version, caught.value.position) == (1, written.first_position)
            with pytest.raises(UnknownEventType):
                await store.read_stream_events("acct-1")
            with pytest.raises(UnknownEventType):
                await store.read_all()
            # The row stays as it is: the stream's version still counts it.
            assert await store.stream_version("acct-1") == 1
