"""Aggregate state codec, snapshot policies, the snapshotter's rules and the cache's size."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import tracemalloc
from typing import Any, ClassVar

import msgspec
import pytest

from obelisk.application import Application, LoadBudget, SnapshotPolicy, Snapshotter
from obelisk.application.cache import AggregateCache, approximate_size
from obelisk.demo.bank import (
    Account,
    AccountOpened,
    Deposit,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.domain import Aggregate, Event
from obelisk.domain.state import StateError, state_codec
from obelisk.store import MemoryEventStore, Snapshot


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class OrderPlaced(Event):
    event_type = "test_state.OrderPlaced"
    lines: list[Line]
    at: dt.datetime


class Order(Aggregate):
    """State of several msgspec-supported kinds, and attributes that are not state."""

    # Mutable defaults are copied per instance by Aggregate.
    lines: list[Line] = []  # noqa: RUF012
    tags: set[str] = set()  # noqa: RUF012
    totals: dict[str, int] = {}  # noqa: RUF012
    placed_at: dt.datetime | None = None
    note: str | None = None
    limit: ClassVar[int] = 10  # a class constant, not state
    _scratch: int = 0  # private: not state

    def apply_placed(self, event: OrderPlaced) -> None:
        self.lines = list(event.lines)
        self.tags = {line.sku[:1] for line in event.lines}
        self.totals = {line.sku: line.quantity for line in event.lines}
        self.placed_at = event.at


def _order() -> Order:
    at = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    return Order.rebuild("o-1", [OrderPlaced(lines=[Line("a1", 2), Line("b7", 1)], at=at)])


def test_state_round_trips_through_msgspec_with_no_code_in_the_class() -> None:
    order = _order()
    codec = state_codec(Order)
    assert set(codec.fields) == {"lines", "tags", "totals", "placed_at", "note"}
    decoded = codec.decode("o-1", 1, codec.encode(order))
    assert isinstance(decoded, Order)
    assert (decoded.id, decoded.version) == ("o-1", 1)
    assert decoded.lines == [Line("a1", 2), Line("b7", 1)]
    assert decoded.tags == {"a", "b"} and decoded.totals == {"a1": 2, "b7": 1}
    assert decoded.placed_at == order.placed_at
    assert decoded.pending_events == [] and not decoded.is_broken


def test_a_state_of_another_shape_fails_to_decode_instead_of_decoding_wrong() -> None:
    codec = state_codec(Account)
    other = msgspec.msgpack.encode({"owner": "ada", "balance": "a lot"})
    with pytest.raises(StateError, match="Account"):
        codec.decode("a", 3, other)
    with pytest.raises(StateError):
        codec.decode("a", 3, msgspec.msgpack.encode({"owner": "ada"}))  # a field missing
    with pytest.raises(StateError):
        codec.decode("a", 3, b"\xc1")


class Opaque:
    """Not something msgspec can encode."""


class Holder(Aggregate):
    thing: Opaque | None = None


def test_configuring_snapshots_for_a_state_msgspec_cannot_encode_fails_at_once() -> None:
    app = Application()
    with pytest.raises(StateError, match="Holder"):
        app.configure(Holder, snapshots=SnapshotPolicy(every=5))
    # Without snapshots the class is fine, and a default policy skips it with a warning.
    app.configure(Holder, snapshots=None)
    assert Application(snapshots=SnapshotPolicy(every=5)).loading.policy(Holder) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every"),
        ({"every": 2.5}, "every"),
        ({"every": None, "load_seconds": 0}, "load_seconds"),
        ({"every": None}, "needs"),
    ],
)
def test_a_snapshot_policy_refuses_nonsense(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SnapshotPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"max_events": -1}, "max_events"), ({"max_seconds": 0}, "max_seconds")]
)
def test_a_load_budget_refuses_nonsense(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoadBudget(**kwargs)


# -- the snapshotter -------------------------------------------------------------------------


async def test_the_snapshotter_skips_an_aggregate_in_the_middle_of_a_command() -> None:
    store = MemoryEventStore()
    snapshotter = Snapshotter(lambda: store)
    account = Account.rebuild("a", [AccountOpened(owner="ada"), MoneyDeposited(amount=5)])
    account.deposit(7)  # recorded, not committed: the state is ahead of the store
    snapshotter.request(account)
    await snapshotter.drain()
    assert await store.load_snapshot("a") is None
    assert (snapshotter.taken, snapshotter.skipped) == (0, 1)

    account.collect_pending()  # as a commit does
    snapshotter.request(account)
    await snapshotter.drain()
    saved = await store.load_snapshot("a")
    assert saved is not None and saved.version == 3
    assert account._snapshot_version == 3


async def test_a_failing_snapshot_store_never_fails_a_command(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with register_bank_handlers(Application(snapshots=SnapshotPolicy(every=2))) as app:

        async def broken(snapshots: list[Snapshot]) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(app.store, "save_snapshots", broken)
        with caplog.at_level(logging.WARNING, logger="obelisk.snapshots"):
            await app.handle(OpenAccount(account_id="a", owner="ada"))
            for amount in range(1, 6):
                await app.handle(Deposit(account_id="a", amount=amount))
            await app.snapshotter.drain()
        assert app.snapshotter.failed >= 1
        assert "disk full" in caplog.text
        assert (await app.get(Account, "a")).balance == 15


# -- the cache's size ------------------------------------------------------------------------


def test_a_byte_bound_evicts_the_least_recently_used_entries() -> None:
    accounts = [Account.rebuild(f"a-{i}", [AccountOpened(owner="ada")]) for i in range(10)]
    one = approximate_size(accounts[0])
    cache = AggregateCache(100, max_bytes=one * 4 + one // 2)
    for account in accounts[:4]:
        cache.put(account)
    assert len(cache) == 4 and cache.evictions == 0
    cache.get("a-0", Account)  # most recently used now
    cache.put(accounts[4])
    assert "a-1" not in cache and "a-0" in cache and len(cache) == 4
    assert cache.bytes <= cache.max_bytes  # type: ignore[operator]
    big = Order.rebuild("big", [])
    big.tags = {f"tag-{i}" for i in range(2000)}
    cache.put(big)  # alone over the bound: kept, everything else goes
    assert list(cache._entries) == ["big"]
    cache.evict("big")
    assert cache.bytes == 0


def test_a_hundred_thousand_small_aggregates_take_under_half_a_kilobyte_each() -> None:
    """The documented memory figure (docs/loading.md): about 350 bytes per cached account."""
    count = 100_000
    cache = AggregateCache(count)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            cache.put(
                Account.rebuild(
                    f"account-{i:06d}",
                    [AccountOpened(owner=f"owner {i}"), MoneyDeposited(amount=i)],
                )
            )
        gc.collect()
        per_aggregate = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(cache) == count
    assert per_aggregate < 512, per_aggregate


def test_an_unknown_cache_mode_or_a_negative_byte_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_mode"):
        Application(cache_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        Application(cache_bytes=-1)
