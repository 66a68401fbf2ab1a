"""Aggregates: recording, dispatch, creation, replay, commands and their failure modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.application import Application
from obelisk.domain import Aggregate, Event, applies, command
from obelisk.errors import AggregateNotFound, DomainError, UnhandledEvent
from obelisk.store import JsonCodec, MsgPackCodec


class PiggyOpened(Event):
    event_type = "unit_aggregate.PiggyOpened"
    owner: str


class CoinAdded(Event):
    event_type = "unit_aggregate.CoinAdded"
    amount: int


class Labelled(Event):
    event_type = "unit_aggregate.Labelled"
    label: str


class Smashed(Event):
    event_type = "unit_aggregate.Smashed"


class Unrelated(Event):
    event_type = "unit_aggregate.Unrelated"


class Piggy(Aggregate):
    owner: str = ""
    balance: int = 0
    labels: list[str] = []  # noqa: RUF012 - copied per instance by Aggregate, under test here
    tags: set[str] = set()  # noqa: RUF012
    notes: dict[str, str] = {}  # noqa: RUF012
    smashed: bool = False

    @command
    def add(self, amount: int) -> None:
        if amount == 0:
            raise DomainError("nothing to add")
        self.record(CoinAdded(amount=amount))

    @command
    def add_twice_then_fail(self, amount: int) -> None:
        self.record(CoinAdded(amount=amount))
        self.record(CoinAdded(amount=amount))
        raise DomainError("changed my mind")

    def apply_opened(self, event: PiggyOpened) -> None:
        self.owner = event.owner

    def apply_coin(self, event: CoinAdded) -> None:
        self.balance += event.amount

    @applies(Labelled)
    def remember_label(self, event: Labelled) -> None:
        self.labels.append(event.label)
        self.tags.add(event.label)
        self.notes[event.label] = self.owner

    @applies(Smashed)
    def break_it(self, event: Smashed) -> None:
        self.smashed = True

    def apply_nothing(self) -> None:
        """Starts with ``apply_`` but takes no event: never an apply method."""


class GoldenPiggy(Piggy):
    gold: int = 0

    def apply_coin(self, event: CoinAdded) -> None:
        # Overrides the parent's apply method for the same event.
        self.gold += event.amount


def opened(owner: str = "ann") -> Piggy:
    return Piggy.create("piggy-1", PiggyOpened(owner=owner))


def test_record_applies_the_event_and_queues_it() -> None:
    piggy = Piggy("p")
    piggy.record(PiggyOpened(owner="ann"))
    piggy.record(CoinAdded(amount=5))
    assert piggy.owner == "ann"
    assert piggy.balance == 5
    assert piggy.pending_events == [PiggyOpened(owner="ann"), CoinAdded(amount=5)]


def test_each_recorded_event_increments_the_version() -> None:
    piggy = Piggy("p")
    assert piggy.version == 0
    for expected in range(1, 4):
        piggy.record(CoinAdded(amount=1))
        assert piggy.version == expected
    assert piggy.committed_version == 0


def test_pending_events_is_a_copy() -> None:
    piggy = opened()
    piggy.pending_events.clear()
    assert len(piggy.pending_events) == 1


def test_collect_pending_takes_the_events_and_moves_the_committed_version() -> None:
    piggy = opened()
    piggy.add(3)
    taken = piggy.collect_pending()
    assert taken == [PiggyOpened(owner="ann"), CoinAdded(amount=3)]
    assert piggy.pending_events == []
    assert piggy.committed_version == piggy.version == 2


def test_an_apply_method_is_found_by_its_prefix_and_parameter_annotation() -> None:
    piggy = Piggy("p")
    piggy.record(CoinAdded(amount=7))
    assert piggy.balance == 7


def test_an_apply_method_is_found_by_the_applies_decorator() -> None:
    piggy = opened()
    piggy.record(Labelled(label="red"))
    piggy.record(Smashed())
    assert piggy.labels == ["red"]
    assert piggy.smashed is True


def test_a_subclass_apply_method_overrides_the_parents_for_the_same_event() -> None:
    golden = GoldenPiggy("g")
    golden.record(CoinAdded(amount=4))
    golden.record(Labelled(label="inherited"))
    assert golden.gold == 4
    assert golden.balance == 0
    assert golden.labels == ["inherited"]


def test_recording_an_event_without_an_apply_method_raises_unhandled_event() -> None:
    piggy = opened()
    with pytest.raises(UnhandledEvent, match="Unrelated"):
        piggy.record(Unrelated())
    # Nothing was queued or counted for the refused event.
    assert piggy.version == 1
    assert piggy.pending_events == [PiggyOpened(owner="ann")]


def test_replaying_an_event_without_an_apply_method_raises_unhandled_event() -> None:
    with pytest.raises(UnhandledEvent):
        Piggy.rebuild("p", [PiggyOpened(owner="ann"), Unrelated()])


def test_handled_event_types_lists_every_apply_method() -> None:
    assert set(Piggy.handled_event_types()) == {PiggyOpened, CoinAdded, Labelled, Smashed}


def test_create_records_the_first_event_as_pending() -> None:
    piggy = Piggy.create("piggy-9", PiggyOpened(owner="bob"))
    assert piggy.id == "piggy-9"
    assert piggy.owner == "bob"
    assert piggy.version == 1
    assert piggy.committed_version == 0
    assert piggy.pending_events == [PiggyOpened(owner="bob")]


def test_rebuild_applies_stored_events_without_queueing_them() -> None:
    events = [PiggyOpened(owner="cy"), CoinAdded(amount=2), CoinAdded(amount=3)]
    piggy = Piggy.rebuild("p", events)
    assert (piggy.owner, piggy.balance, piggy.version) == ("cy", 5, 3)
    assert piggy.pending_events == []
    assert piggy.committed_version == 3


def test_rebuild_from_a_later_version_counts_on_from_there() -> None:
    piggy = Piggy.rebuild("p", [CoinAdded(amount=2)], version=10)
    assert piggy.version == 11


def test_mutable_class_defaults_are_not_shared_between_instances() -> None:
    first = opened("ann")
    second = opened("bob")
    first.record(Labelled(label="only-first"))
    assert second.labels == []
    assert second.tags == set()
    assert second.notes == {}
    assert Piggy.labels == []
    assert Piggy.tags == set()
    assert Piggy.notes == {}
    assert first.labels == ["only-first"]


def test_mutable_defaults_of_a_subclass_are_not_shared_either() -> None:
    first, second = GoldenPiggy("a"), GoldenPiggy("b")
    first.record(Labelled(label="x"))
    assert second.labels == []


def test_a_command_that_raises_before_recording_leaves_the_aggregate_intact() -> None:
    piggy = opened()
    with pytest.raises(DomainError):
        piggy.add(0)
    assert not piggy.is_broken
    assert piggy.version == 1
    assert piggy.balance == 0
    piggy.add(2)  # still usable
    assert piggy.balance == 2


def test_a_command_that_raises_after_recording_marks_the_aggregate_broken() -> None:
    piggy = opened()
    with pytest.raises(DomainError):
        piggy.add_twice_then_fail(5)
    assert piggy.is_broken
    assert piggy.balance == 10  # half-changed state, which is why it is marked


def test_a_fresh_aggregate_is_not_broken() -> None:
    assert not opened().is_broken
    assert not Piggy.rebuild("p", [PiggyOpened(owner="x")]).is_broken


def test_the_repr_names_the_type_id_and_version() -> None:
    assert repr(opened()) == "<Piggy id='piggy-1' version=1>"


def test_the_aggregate_type_defaults_to_the_class_name() -> None:
    assert Piggy.aggregate_type == "Piggy"
    assert GoldenPiggy.aggregate_type == "GoldenPiggy"


@settings(deadline=None)  # shared, noisy machines: no per-example time limit
@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=60))
def test_an_aggregate_rebuilt_from_its_recorded_events_equals_the_original(
    deposits: list[int],
) -> None:
    original = Piggy.create("prop", PiggyOpened(owner="hyp"))
    for amount in deposits:
        original.record(CoinAdded(amount=amount))
    recorded = original.pending_events

    direct = Piggy.rebuild("prop", recorded)
    assert (direct.balance, direct.version) == (original.balance, original.version)
    assert direct.balance == sum(deposits)
    assert direct.version == len(deposits) + 1

    # The same holds after a trip through each codec, as it does through a store.
    for codec in (JsonCodec(), MsgPackCodec()):
        decoded = [
            codec.decode(type(e).event_type, type(e).schema_version, codec.encode(e), "prop", i, i)
            for i, e in enumerate(recorded, start=1)
        ]
        again = Piggy.rebuild("prop", decoded)
        assert (again.owner, again.balance, again.version) == (
            original.owner,
            original.balance,
            original.version,
        )


# -- state as of a version, through an application ----------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def app(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[Application]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'agg.db'}"
    async with Application(url) as application:
        yield application


async def test_get_with_a_version_returns_the_state_as_of_that_version(app: Application) -> None:
    piggy = opened("dee")
    for amount in (1, 10, 100):
        piggy.add(amount)
    await app.store.append(piggy.id, piggy.collect_pending(), 0, stream_type="Piggy")

    assert (await app.get(Piggy, piggy.id, version=1)).balance == 0
    as_of_two = await app.get(Piggy, piggy.id, version=2)
    assert (as_of_two.balance, as_of_two.version) == (1, 2)
    as_of_three = await app.get(Piggy, piggy.id, version=3)
    assert (as_of_three.balance, as_of_three.version) == (11, 3)
    latest = await app.get(Piggy, piggy.id)
    assert (latest.balance, latest.version) == (111, 4)


async def test_get_of_an_aggregate_with_no_events_raises_aggregate_not_found(
    app: Application,
) -> None:
    with pytest.raises(AggregateNotFound) as info:
        await app.get(Piggy, "nobody")
    assert (info.value.aggregate_type, info.value.aggregate_id) == ("Piggy", "nobody")
