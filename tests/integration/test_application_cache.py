"""The aggregate cache inside Application, on real SQLite files and on the memory store.

A hit must skip the store read; anything that leaves an instance different from what the
store holds (a failed handler, a conflict, a cancellation) must evict it; queries never
see the cached instances. Reads are counted by wrapping ``read_stream_events`` on the
open store instance, never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.application import Application, Command, RetryPolicy, UnitOfWork
from obelisk.demo.bank import Account, Deposit, MoneyDeposited, OpenAccount, register_bank_handlers
from obelisk.domain import Event, command
from obelisk.errors import CommandRejected, ConcurrencyError, DomainError
from obelisk.store import (
    AppendRequest,
    AppendResult,
    EventStore,
    MemoryEventStore,
    SQLiteEventStore,
)

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)


# -- commands and handlers used only here -------------------------------------------------------


class DepositThenFail(Command):
    """Its handler records a deposit, then raises: nothing may be committed or cached."""

    command_type = "test_app_cache.DepositThenFail"
    account_id: str
    amount: int


class Peek(Command):
    """Its handler only looks: what state does a command see?"""

    command_type = "test_app_cache.Peek"
    account_id: str


class NegativeDeposit(Command):
    """Its handler asks the account for a negative deposit, refused before recording."""

    command_type = "test_app_cache.NegativeDeposit"
    account_id: str
    amount: int


class BrittleAccount(Account):
    """An account whose command can raise after recording (the instance becomes broken)."""

    @command
    def deposit_then_change_mind(self, amount: int) -> None:
        self.deposit(amount)
        raise DomainError("changed its mind after recording the deposit")


class BrittleDeposit(Command):
    command_type = "test_app_cache.BrittleDeposit"
    account_id: str
    amount: int


class BrittleChangeOfMind(Command):
    command_type = "test_app_cache.BrittleChangeOfMind"
    account_id: str
    amount: int
    swallow: bool


async def _deposit_then_fail(uow: UnitOfWork, cmd: DepositThenFail) -> None:
    account = await uow.get(Account, cmd.account_id)
    account.deposit(cmd.amount)
    raise RuntimeError("the handler failed after the deposit was recorded")


async def _negative_deposit(uow: UnitOfWork, cmd: NegativeDeposit) -> None:
    (await uow.get(Account, cmd.account_id)).deposit(-cmd.amount)


async def _brittle_deposit(uow: UnitOfWork, cmd: BrittleDeposit) -> None:
    (await uow.get(BrittleAccount, cmd.account_id)).deposit(cmd.amount)


async def _brittle_change_of_mind(uow: UnitOfWork, cmd: BrittleChangeOfMind) -> None:
    account = await uow.get(BrittleAccount, cmd.account_id)
    if cmd.swallow:
        # A handler that swallows the failure still may not commit the half-changed state.
        with contextlib.suppress(DomainError):
            account.deposit_then_change_mind(cmd.amount)
    else:
        account.deposit_then_change_mind(cmd.amount)


def _bank_app(store: str | EventStore, **kwargs: Any) -> Application:
    app = register_bank_handlers(Application(store, **kwargs))
    app.commands.register(DepositThenFail, _deposit_then_fail)
    app.commands.register(NegativeDeposit, _negative_deposit)
    app.commands.register(BrittleDeposit, _brittle_deposit)
    app.commands.register(BrittleChangeOfMind, _brittle_change_of_mind)
    return app


def _sqlite_url(path: Path) -> str:
    # NORMAL keeps many one-at-a-time commits quick; durability is not under test here.
    return f"sqlite:///{path}?synchronous=NORMAL"


class Stores:
    """Builds Applications over one store: a SQLite file, or one shared memory store.

    Two Applications on the SQLite file may be open at once (that is how another process
    looks). The memory store is one instance: open its Applications one after another.
    """

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "app.db"
        self._memory = MemoryEventStore()

    def app(self, **kwargs: Any) -> Application:
        store: str | EventStore = self._memory if self.kind == "memory" else _sqlite_url(self.path)
        return _bank_app(store, **kwargs)

    async def reload(self, account_id: str) -> tuple[int, int]:
        """Balance and version as a freshly opened Application loads them."""
        async with self.app() as fresh:
            account = await fresh.get(Account, account_id)
            assert account_id not in fresh.cache
            return account.balance, account.version


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]) -> Stores:
    return Stores(str(request.param), tmp_path)


class ReadCounter:
    """Wraps ``read_stream_events`` on an open store and records the stream of every call."""

    def __init__(self, app: Application, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        real = app.store.read_stream_events

        async def counting(stream_id: str, **kwargs: Any) -> list[Event]:
            self.reads.append(stream_id)
            return await real(stream_id, **kwargs)

        monkeypatch.setattr(app.store, "read_stream_events", counting)


def _register_peek(app: Application) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []

    @app.handler(Peek)
    async def peek(uow: UnitOfWork, cmd: Peek) -> None:
        account = await uow.get(Account, cmd.account_id)
        seen.append((account.balance, account.version))

    return seen


async def _open(app: Application, account_id: str, *deposits: int) -> None:
    await app.handle(OpenAccount(account_id=account_id, owner=f"owner of {account_id}"))
    for amount in deposits:
        await app.handle(Deposit(account_id=account_id, amount=amount))


def _cached(app: Application, account_id: str, cls: type[Account] = Account) -> Account:
    found = app.cache.get(account_id, cls)
    assert found is not None, f"{account_id!r} is not cached as a {cls.__name__}"
    return found


async def _state(app: Application, account_id: str) -> tuple[int, int]:
    account = await app.get(Account, account_id)
    return account.balance, account.version


async def _stored_amounts(store: EventStore, account_id: str) -> list[int]:
    events = await store.read_stream_events(account_id)
    return [event.amount for event in events if isinstance(event, MoneyDeposited)]


async def _settle(task: asyncio.Task[Any]) -> None:
    """Give ``task`` a few loop iterations (scheduling, not timing) to reach its await."""
    for _ in range(20):
        if task.done():
            return
        await asyncio.sleep(0)


# -- hits skip the store ----------------------------------------------------------------------


async def test_a_second_command_on_one_aggregate_is_served_from_the_cache_without_a_read(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as setup:
        await _open(setup, "acc-1")
    async with stores.app() as app:
        counter = ReadCounter(app, monkeypatch)
        await app.handle(Deposit(account_id="acc-1", amount=10))
        assert counter.reads == ["acc-1"]
        assert (app.cache.hits, app.cache.misses) == (0, 1)

        await app.handle(Deposit(account_id="acc-1", amount=5))
        assert counter.reads == ["acc-1"]
        assert (app.cache.hits, app.cache.misses) == (1, 1)
        assert await _state(app, "acc-1") == (15, 3)


async def test_an_account_opened_here_is_cached_by_its_commit_so_its_first_deposit_reads_nothing(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as app:
        counter = ReadCounter(app, monkeypatch)
        await _open(app, "acc-1", 7, 8)
        assert counter.reads == []
        assert (app.cache.hits, app.cache.misses) == (2, 0)
        assert await _state(app, "acc-1") == (15, 3)


async def test_a_read_only_command_caches_what_it_loaded_for_the_next_command(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as setup:
        await _open(setup, "acc-1", 4)
    async with stores.app() as app:
        seen = _register_peek(app)
        counter = ReadCounter(app, monkeypatch)
        await app.handle(Peek(account_id="acc-1"))
        assert "acc-1" in app.cache
        await app.handle(Peek(account_id="acc-1"))
        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert counter.reads == ["acc-1"]
        assert seen == [(4, 2), (4, 2)]
        assert await _state(app, "acc-1") == (5, 3)


async def test_after_a_commit_the_cached_instance_is_at_the_stream_version_in_the_store(
    stores: Stores,
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 3, 4)
        await _open(app, "acc-2", 5)
        async with app.unit_of_work() as uow:
            (await uow.get(Account, "acc-1")).deposit(1)
            two = await uow.get(Account, "acc-2")
            two.deposit(2)
            two.deposit(3)
        for account_id, balance in (("acc-1", 8), ("acc-2", 10)):
            cached = _cached(app, account_id)
            assert cached.version == await app.store.stream_version(account_id)
            assert cached.pending_events == []
            assert not cached.is_broken
            assert (cached.balance, cached.version) == await _state(app, account_id)
            assert cached.balance == balance


async def test_a_command_asking_for_another_class_misses_and_reads_the_store(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 2)  # cached as an Account
        counter = ReadCounter(app, monkeypatch)
        await app.handle(BrittleDeposit(account_id="acc-1", amount=3))
        assert counter.reads == ["acc-1"]
        assert isinstance(_cached(app, "acc-1", BrittleAccount), BrittleAccount)
        await app.handle(BrittleDeposit(account_id="acc-1", amount=4))
        assert counter.reads == ["acc-1"]
        assert await _state(app, "acc-1") == (9, 4)


# -- other writers ---------------------------------------------------------------------------

WriteFn = Callable[[str, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def _writer_app(
    writer: str, tmp_path: Path, **kwargs: Any
) -> AsyncIterator[tuple[Application, WriteFn]]:
    """Our Application, and a function with which someone else deposits behind its back."""
    if writer == "memory-same-store":
        async with _bank_app(MemoryEventStore(), **kwargs) as app:

            async def write_directly(account_id: str, amount: int) -> None:
                version = await app.store.stream_version(account_id)
                await app.store.append(account_id, [MoneyDeposited(amount=amount)], version)

            yield app, write_directly
        return
    path = tmp_path / "shared.db"
    async with _bank_app(_sqlite_url(path), **kwargs) as app:
        if writer == "sqlite-second-store":
            async with SQLiteEventStore(path, synchronous="NORMAL") as other_store:

                async def write_by_store(account_id: str, amount: int) -> None:
                    version = await other_store.stream_version(account_id)
                    await other_store.append(account_id, [MoneyDeposited(amount=amount)], version)

                yield app, write_by_store
        else:
            async with _bank_app(_sqlite_url(path)) as other_app:

                async def write_by_app(account_id: str, amount: int) -> None:
                    await other_app.handle(Deposit(account_id=account_id, amount=amount))

                yield app, write_by_app


WRITERS = ["sqlite-second-store", "sqlite-second-app", "memory-same-store"]


@pytest.mark.parametrize("writer", WRITERS)
async def test_a_write_behind_the_cache_fails_the_next_command_evicts_and_the_one_after_succeeds(
    writer: str, tmp_path: Path, loop_errors: list[object]
) -> None:
    async with _writer_app(writer, tmp_path) as (app, write):
        await _open(app, "acc-1", 10)
        await write("acc-1", 100)
        assert "acc-1" in app.cache  # stale, and nothing here can know it yet

        with pytest.raises(ConcurrencyError) as info:
            await app.handle(Deposit(account_id="acc-1", amount=1))
        assert (info.value.stream_id, info.value.expected, info.value.actual) == ("acc-1", 2, 3)
        assert "acc-1" not in app.cache
        assert await _stored_amounts(app.store, "acc-1") == [10, 100]

        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert await _state(app, "acc-1") == (111, 4)
        cached = _cached(app, "acc-1")
        assert (cached.balance, cached.version) == (111, 4)


@pytest.mark.parametrize("writer", WRITERS)
async def test_with_a_retry_policy_a_write_behind_the_cache_is_absorbed_by_one_fresh_read(
    writer: str, tmp_path: Path, loop_errors: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _writer_app(writer, tmp_path, retry=NO_WAIT) as (app, write):
        await _open(app, "acc-1", 10)
        await write("acc-1", 100)
        counter = ReadCounter(app, monkeypatch)
        hits = app.cache.hits

        await app.handle(Deposit(account_id="acc-1", amount=1))

        # The first run hit the stale instance and conflicted; the retry read the store once.
        assert counter.reads == ["acc-1"]
        assert app.cache.hits == hits + 1
        assert await _stored_amounts(app.store, "acc-1") == [10, 100, 1]
        assert await _state(app, "acc-1") == (111, 4)
        cached = _cached(app, "acc-1")
        assert (cached.balance, cached.version) == (111, 4)


async def test_two_applications_on_one_file_taking_turns_with_retries_lose_no_deposit(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _sqlite_url(tmp_path / "turns.db")
    async with _bank_app(url, retry=NO_WAIT) as left, _bank_app(url, retry=NO_WAIT) as right:
        await _open(left, "acc-1")
        for turn in range(1, 11):
            await left.handle(Deposit(account_id="acc-1", amount=turn))
            await right.handle(Deposit(account_id="acc-1", amount=100 * turn))
        expected = sum(range(1, 11)) * 101
        for app in (left, right):
            assert await _state(app, "acc-1") == (expected, 21)
        # Whoever wrote last holds the current state; the other holds an older one at most.
        assert (_cached(right, "acc-1").balance, _cached(right, "acc-1").version) == (
            expected,
            21,
        )
        stale = _cached(left, "acc-1")
        assert stale.version == 20
        assert stale.balance == (await left.get(Account, "acc-1", version=20)).balance


async def test_closing_the_application_empties_the_cache_so_writes_made_meanwhile_are_seen(
    tmp_path: Path, loop_errors: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _sqlite_url(tmp_path / "reopen.db")
    app = _bank_app(url)
    async with app:
        await _open(app, "acc-1", 5)
        assert "acc-1" in app.cache
    assert len(app.cache) == 0
    async with _bank_app(url) as other:
        await other.handle(Deposit(account_id="acc-1", amount=50))
    async with app:
        counter = ReadCounter(app, monkeypatch)
        await app.handle(Deposit(account_id="acc-1", amount=1))  # no ConcurrencyError
        assert counter.reads == ["acc-1"]
        assert await _state(app, "acc-1") == (56, 4)


# -- failures evict ----------------------------------------------------------------------------


async def test_a_handler_raising_after_recording_evicts_so_the_next_command_sees_committed_state(
    stores: Stores,
) -> None:
    async with stores.app() as app:
        seen = _register_peek(app)
        await _open(app, "acc-1", 10)
        evictions = app.cache.evictions

        with pytest.raises(RuntimeError, match="after the deposit was recorded"):
            await app.handle(DepositThenFail(account_id="acc-1", amount=500))

        assert "acc-1" not in app.cache
        assert app.cache.evictions == evictions + 1
        await app.handle(Peek(account_id="acc-1"))
        assert seen == [(10, 2)]
        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert await _state(app, "acc-1") == (11, 3)
        assert (_cached(app, "acc-1").balance, _cached(app, "acc-1").version) == (11, 3)
        assert await _stored_amounts(app.store, "acc-1") == [10, 1]
    assert await stores.reload("acc-1") == (11, 3)


@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "swallowed"])
async def test_a_broken_cached_aggregate_is_evicted_and_never_served_again(
    stores: Stores, swallow: bool
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1")
        await app.handle(BrittleDeposit(account_id="acc-1", amount=10))
        hits = app.cache.hits

        expected_error = CommandRejected if swallow else DomainError
        with pytest.raises(expected_error):
            await app.handle(BrittleChangeOfMind(account_id="acc-1", amount=500, swallow=swallow))

        assert app.cache.hits == hits + 1  # the broken instance was the cached one
        assert "acc-1" not in app.cache
        await app.handle(BrittleDeposit(account_id="acc-1", amount=1))
        cached = _cached(app, "acc-1", BrittleAccount)
        assert not cached.is_broken
        assert (cached.balance, cached.version) == (11, 3) == await _state(app, "acc-1")
    assert await stores.reload("acc-1") == (11, 3)


async def test_a_refused_command_evicts_so_the_next_command_loads_afresh(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal may have been decided on a state another process has since changed:
    # the next command must not be decided on the same cached instance again.
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        _cached(app, "acc-1")
        with pytest.raises(DomainError, match="positive"):
            await app.handle(NegativeDeposit(account_id="acc-1", amount=5))
        assert "acc-1" not in app.cache
        counter = ReadCounter(app, monkeypatch)
        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert counter.reads == ["acc-1"]
        assert await _state(app, "acc-1") == (11, 3)


# -- cancellation ------------------------------------------------------------------------------


async def test_a_command_cancelled_while_waiting_for_the_lock_changes_nothing(
    stores: Stores,
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        holding = asyncio.Event()
        go_on = asyncio.Event()

        async def hold() -> None:
            async with app.unit_of_work() as uow:
                (await uow.get(Account, "acc-1")).deposit(20)
                holding.set()
                await go_on.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()
        waiter = asyncio.create_task(app.handle(Deposit(account_id="acc-1", amount=300)))
        await _settle(waiter)
        assert not waiter.done(), "the command should be waiting for the keyed lock"
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        go_on.set()
        await holder

        await app.handle(Deposit(account_id="acc-1", amount=4000))
        assert await _state(app, "acc-1") == (4030, 4)
        assert (_cached(app, "acc-1").balance, _cached(app, "acc-1").version) == (4030, 4)
        assert await _stored_amounts(app.store, "acc-1") == [10, 20, 4000]
    assert await stores.reload("acc-1") == (4030, 4)


async def test_a_unit_cancelled_after_recording_is_evicted_so_the_waiting_command_sees_the_store(
    stores: Stores,
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        holding = asyncio.Event()

        async def hold_forever() -> None:
            async with app.unit_of_work() as uow:
                (await uow.get(Account, "acc-1")).deposit(20)  # the cached instance
                holding.set()
                await asyncio.Event().wait()

        holder = asyncio.create_task(hold_forever())
        await holding.wait()
        waiter = asyncio.create_task(app.handle(Deposit(account_id="acc-1", amount=300)))
        await _settle(waiter)
        assert not waiter.done()
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        await waiter

        # The cancelled unit's 20 was applied to the cached instance but never committed.
        assert await _stored_amounts(app.store, "acc-1") == [10, 300]
        assert await _state(app, "acc-1") == (310, 3)
        assert (_cached(app, "acc-1").balance, _cached(app, "acc-1").version) == (310, 3)
    assert await stores.reload("acc-1") == (310, 3)


def _gate_appends(
    app: Application, monkeypatch: pytest.MonkeyPatch, *, after_the_write: bool
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the next appends wait on a gate, before or after they reach the store.

    Returns (reached, gate): ``reached`` is set when an append got to the gate.
    """
    real = app.store.append_many
    reached = asyncio.Event()
    gate = asyncio.Event()

    async def gated(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if after_the_write:
            results = await real(requests)
            reached.set()
            await gate.wait()
            return results
        reached.set()
        await gate.wait()
        return await real(requests)

    monkeypatch.setattr(app.store, "append_many", gated)
    return reached, gate


async def _stored_with_correlation(
    store: EventStore, account_id: str
) -> list[tuple[int, str | None]]:
    return [
        (stored.event.amount, stored.correlation_id)
        for stored in await store.read_stream(account_id)
        if isinstance(stored.event, MoneyDeposited)
    ]


async def test_a_command_cancelled_before_its_append_reached_the_store_is_evicted(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        with monkeypatch.context() as patch:
            reached, gate = _gate_appends(app, patch, after_the_write=False)
            task = asyncio.create_task(app.handle(Deposit(account_id="acc-1", amount=500)))
            await reached.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The cached instance has the 500 applied but not committed: it must be gone.
            assert "acc-1" not in app.cache
            assert await _stored_amounts(app.store, "acc-1") == [10]
            # Let the store finish whatever it still does for nobody (whether an append
            # outlives its cancelled caller is the unit of work's choice, not the cache's).
            gate.set()
            await app.handle(Deposit(account_id="acc-1", amount=1), correlation_id="next")

        stored = await _stored_with_correlation(app.store, "acc-1")
        # Never the cancelled deposit re-committed as part of the next command.
        assert stored in ([(10, None), (1, "next")], [(10, None), (500, None), (1, "next")])
        expected = (sum(amount for amount, _ in stored), len(stored) + 1)
        assert await _state(app, "acc-1") == expected
        assert (_cached(app, "acc-1").balance, _cached(app, "acc-1").version) == expected
    assert await stores.reload("acc-1") == expected


async def test_a_command_cancelled_after_its_append_landed_is_evicted_and_the_next_sees_it(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        with monkeypatch.context() as patch:
            reached, gate = _gate_appends(app, patch, after_the_write=True)
            task = asyncio.create_task(app.handle(Deposit(account_id="acc-1", amount=500)))
            await reached.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The caller never heard back, but the deposit is in the store: the cached
            # instance (committed at version 2) would now conflict, so it must be gone.
            assert "acc-1" not in app.cache
            assert await _stored_amounts(app.store, "acc-1") == [10, 500]
            gate.set()
            await app.handle(Deposit(account_id="acc-1", amount=1))

        assert await _stored_amounts(app.store, "acc-1") == [10, 500, 1]
        assert await _state(app, "acc-1") == (511, 4)
        assert (_cached(app, "acc-1").balance, _cached(app, "acc-1").version) == (511, 4)
    assert await stores.reload("acc-1") == (511, 4)


def _yield_around_store_calls(app: Application, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every read and append yield to the loop first, as a network store would.

    The memory store never suspends: without this, every command would finish in the
    loop iteration it started in and could never be cancelled half-way.
    """
    store = app.store
    read, append = store.read_stream_events, store.append_many

    async def yielding_read(stream_id: str, **kwargs: Any) -> list[Event]:
        await asyncio.sleep(0)
        return await read(stream_id, **kwargs)

    async def yielding_append(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        await asyncio.sleep(0)
        return await append(requests)

    monkeypatch.setattr(store, "read_stream_events", yielding_read)
    monkeypatch.setattr(store, "append_many", yielding_append)


async def test_cancelling_some_of_many_concurrent_commands_leaves_every_balance_exact(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = ["acc-0", "acc-1", "acc-2"]
    final: dict[str, tuple[int, int]] = {}
    async with stores.app(cache_size=2) as app:
        for account_id in ids:
            await _open(app, account_id)
        _yield_around_store_calls(app, monkeypatch)
        target = {amount: ids[amount % 3] for amount in range(1, 151)}
        tasks = {
            amount: asyncio.create_task(app.handle(Deposit(account_id=account_id, amount=amount)))
            for amount, account_id in target.items()
        }
        cancelled: set[int] = set()
        for step in range(60):
            await asyncio.sleep(0)
            amount = (step * 7) % 150 + 1
            if tasks[amount].cancel():
                cancelled.add(amount)
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        outcomes = dict(zip(tasks, results, strict=True))

        # A ConcurrencyError here is the in-flight-append bug that
        # test_a_cancelled_append_in_flight_keeps_its_aggregate_locked_until_it_settles pins
        # down; it only fails a command, so the balances below must still be exact.
        unexpected = [
            outcome
            for outcome in results
            if isinstance(outcome, BaseException)
            and not isinstance(outcome, asyncio.CancelledError | ConcurrencyError)
        ]
        assert unexpected == []
        succeeded = {a for a, o in outcomes.items() if not isinstance(o, BaseException)}
        interrupted = {a for a, o in outcomes.items() if isinstance(o, asyncio.CancelledError)}
        assert interrupted, "no command was cancelled: the test proves nothing"
        assert interrupted <= cancelled
        assert succeeded, "every command failed: the test proves nothing"
        for account_id in ids:
            stored = await _stored_amounts(app.store, account_id)
            mine = {a for a in succeeded if target[a] == account_id}
            assert len(stored) == len(set(stored))
            assert mine <= set(stored)
            # A cancelled append may still have landed; nothing else may have.
            assert set(stored) - mine <= interrupted
        monkeypatch.undo()
        for account_id in ids:
            # The next command, through the cache, starts from exactly what is stored.
            stored = await _stored_amounts(app.store, account_id)
            await app.handle(Deposit(account_id=account_id, amount=1_000_000))
            expected = (sum(stored) + 1_000_000, len(stored) + 2)
            assert await _state(app, account_id) == expected
            assert (_cached(app, account_id).balance, _cached(app, account_id).version) == expected
            final[account_id] = expected
    for account_id in ids:
        assert await stores.reload(account_id) == final[account_id]


def _block_writes(path: Path) -> sqlite3.Connection:
    """Another process's write transaction on ``path``: appends wait until it ends."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``condition`` (a commit on the writer thread); a cap, not a timing assertion."""
    for _ in range(1000):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("follow_up", ["deposit", "peek"])
async def test_a_cancelled_append_in_flight_keeps_its_aggregate_locked_until_it_settles(
    follow_up: str, tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "in-flight.db"
    async with _bank_app(_sqlite_url(path)) as app:
        seen = _register_peek(app)
        await _open(app, "acc-1", 10)
        blocker = _block_writes(path)
        try:
            first = asyncio.create_task(app.handle(Deposit(account_id="acc-1", amount=500)))
            second = asyncio.create_task(
                app.handle(Peek(account_id="acc-1"))
                if follow_up == "peek"
                else app.handle(Deposit(account_id="acc-1", amount=1))
            )
            await _settle(first)
            assert not first.done(), "the first append should be waiting for the file lock"
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            await _settle(second)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        async def landed() -> bool:
            return await app.store.stream_version("acc-1") >= 3

        await _until(landed)  # the cancelled caller's append still commits
        await second  # a ConcurrencyError here means the second unit loaded too early
        if follow_up == "peek":
            assert seen == [(510, 3)]
            cached = _cached(app, "acc-1")
            assert (cached.balance, cached.version) == (510, 3)
        else:
            assert await _state(app, "acc-1") == (511, 4)


# -- queries never share the cached instance -----------------------------------------------------


async def test_app_get_returns_a_fresh_instance_that_a_query_may_mutate_harmlessly(
    stores: Stores,
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        query = await app.get(Account, "acc-1")
        cached = _cached(app, "acc-1")
        assert query is not cached
        assert query is not await app.get(Account, "acc-1")

        query.deposit(1000)  # a command on the query's instance, never committed

        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert await _state(app, "acc-1") == (11, 3)
        assert await _stored_amounts(app.store, "acc-1") == [10, 1]
        # And the other way round: the command did not change the query's instance.
        assert (query.balance, query.version) == (1010, 3)
        assert query.pending_events == [MoneyDeposited(amount=1000)]


async def test_app_get_always_reads_the_store_and_never_touches_the_cache(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app() as app:
        await _open(app, "acc-1", 10)
        await _open(app, "acc-2", 20)
        app.cache.evict("acc-2")
        counters = (app.cache.hits, app.cache.misses, app.cache.evictions)
        counter = ReadCounter(app, monkeypatch)

        for _ in range(3):
            assert (await app.get(Account, "acc-1")).balance == 10
        assert (await app.get(Account, "acc-2")).balance == 20

        assert counter.reads == ["acc-1", "acc-1", "acc-1", "acc-2"]
        assert (app.cache.hits, app.cache.misses, app.cache.evictions) == counters
        assert "acc-2" not in app.cache


# -- cache disabled --------------------------------------------------------------------------


def test_a_negative_cache_size_is_refused_when_the_application_is_built() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Application("memory://", cache_size=-1)


async def test_with_cache_size_zero_every_command_reads_the_store(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stores.app(cache_size=0) as app:
        await _open(app, "acc-1")
        counter = ReadCounter(app, monkeypatch)
        for amount in (1, 2, 3):
            await app.handle(Deposit(account_id="acc-1", amount=amount))
        assert counter.reads == ["acc-1"] * 3
        assert len(app.cache) == 0
        assert app.cache.hits == 0
        assert await _state(app, "acc-1") == (6, 4)


async def _script(app: Application) -> list[object]:
    """A fixed mix of commands; what each returned or raised (by type)."""
    steps: list[Command] = [
        OpenAccount(account_id="a", owner="ann"),
        OpenAccount(account_id="b", owner="bob"),
        Deposit(account_id="a", amount=5),
        DepositThenFail(account_id="a", amount=7),
        Deposit(account_id="b", amount=3),
        BrittleDeposit(account_id="a", amount=2),
        BrittleChangeOfMind(account_id="a", amount=9, swallow=True),
        Deposit(account_id="a", amount=2),
        OpenAccount(account_id="a", owner="imposter"),
        Deposit(account_id="b", amount=4),
    ]
    outcomes: list[object] = []
    for step in steps:
        try:
            outcomes.append(await app.handle(step))
        except Exception as exc:
            outcomes.append(type(exc))
    for account_id in ("a", "b"):
        outcomes.append(await _state(app, account_id))
        outcomes.append(await _stored_amounts(app.store, account_id))
    return outcomes


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_with_cache_size_zero_commands_behave_exactly_as_with_the_cache(
    kind: str, tmp_path: Path, loop_errors: list[object]
) -> None:
    outcomes = []
    for cache_size in (0, 10_000):
        folder = tmp_path / f"size-{cache_size}"
        folder.mkdir()
        async with Stores(kind, folder).app(cache_size=cache_size) as app:
            outcomes.append(await _script(app))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][-4:] == [(9, 4), [5, 2, 2], (7, 3), [3, 4]]


async def test_with_cache_size_zero_a_write_behind_its_back_causes_no_conflict(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    async with _writer_app("sqlite-second-store", tmp_path, cache_size=0) as (app, write):
        await _open(app, "acc-1", 10)
        await write("acc-1", 100)
        await app.handle(Deposit(account_id="acc-1", amount=1))
        assert await _state(app, "acc-1") == (111, 4)


# -- load -------------------------------------------------------------------------------------


async def test_many_concurrent_commands_with_a_tiny_cache_leave_every_balance_exact(
    stores: Stores,
) -> None:
    ids = [f"acc-{n}" for n in range(8)]
    async with stores.app(cache_size=3) as app:
        for account_id in ids:
            await _open(app, account_id)
        assert app.cache.evictions >= len(ids) - 3

        async def pair(first: str, second: str) -> None:
            # Sorted ids: two units never wait on each other.
            async with app.unit_of_work() as uow:
                for account_id in sorted((first, second)):
                    (await uow.get(Account, account_id)).deposit(1000)

        work: list[Awaitable[Any]] = []
        expected = dict.fromkeys(ids, 0)
        deposits = dict.fromkeys(ids, 0)
        for n in range(240):
            account_id = ids[0] if n % 3 == 0 else ids[n % len(ids)]  # one hot account
            work.append(app.handle(Deposit(account_id=account_id, amount=n + 1)))
            expected[account_id] += n + 1
            deposits[account_id] += 1
        for n in range(40):
            first, second = ids[n % len(ids)], ids[(n * 3 + 1) % len(ids)]
            if first == second:
                continue
            work.append(pair(first, second))
            for account_id in (first, second):
                expected[account_id] += 1000
                deposits[account_id] += 1
        evictions = app.cache.evictions
        await asyncio.gather(*work)

        assert app.cache.evictions > evictions
        assert len(app.cache) <= 3
        for account_id in ids:
            assert await _state(app, account_id) == (expected[account_id], deposits[account_id] + 1)
            if account_id in app.cache:
                cached = _cached(app, account_id)
                assert (cached.balance, cached.version) == await _state(app, account_id)
    for account_id in ids:
        assert await stores.reload(account_id) == (expected[account_id], deposits[account_id] + 1)


# -- property: the cached view never disagrees with the store ------------------------------------

_ACCOUNTS = ["h-0", "h-1", "h-2"]
_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "deposit", "foreign", "fail", "query-mutate"]),
        st.integers(min_value=0, max_value=len(_ACCOUNTS) - 1),
        st.integers(min_value=1, max_value=99),
    ),
    max_size=20,
)


async def _check_views(app: Application, model: dict[str, int], stale: set[str]) -> None:
    for account_id in _ACCOUNTS:
        fresh = await app.get(Account, account_id)
        assert fresh.balance == model[account_id]
        if account_id not in app.cache:
            continue
        cached = _cached(app, account_id)
        assert cached.pending_events == []
        assert not cached.is_broken
        if account_id in stale:
            # Written behind our back: the cached state may lag, but only as a true
            # earlier state of the stream.
            then = await app.get(Account, account_id, version=cached.version)
            assert (cached.balance, cached.version) == (then.balance, then.version)
        else:
            assert (cached.balance, cached.version) == (fresh.balance, fresh.version)


async def _run_steps(
    store: str | EventStore, cache_size: int, retry: bool, steps: list[tuple[str, int, int]]
) -> dict[str, int]:
    model = dict.fromkeys(_ACCOUNTS, 0)
    stale: set[str] = set()
    app = _bank_app(store, cache_size=cache_size, retry=NO_WAIT if retry else None)
    async with app:
        for account_id in _ACCOUNTS:
            await _open(app, account_id)
        for op, index, amount in steps:
            account_id = _ACCOUNTS[index]
            if op == "deposit":
                was_cached = account_id in app.cache
                try:
                    await app.handle(Deposit(account_id=account_id, amount=amount))
                except ConcurrencyError:
                    assert was_cached and account_id in stale and not retry
                    assert account_id not in app.cache
                else:
                    model[account_id] += amount
                stale.discard(account_id)
            elif op == "foreign":
                version = await app.store.stream_version(account_id)
                await app.store.append(account_id, [MoneyDeposited(amount=amount)], version)
                model[account_id] += amount
                stale.add(account_id)
            elif op == "fail":
                with pytest.raises(RuntimeError):
                    await app.handle(DepositThenFail(account_id=account_id, amount=amount))
                assert account_id not in app.cache
                stale.discard(account_id)
            else:
                (await app.get(Account, account_id)).deposit(amount)
            await _check_views(app, model, stale)
    return model


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=30, deadline=None)
@given(
    cache_size=st.integers(min_value=0, max_value=3),
    retry=st.booleans(),
    steps=_STEPS,
)
def test_the_cached_view_and_a_fresh_load_always_agree(
    kind: str, cache_size: int, retry: bool, steps: list[tuple[str, int, int]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="obelisk-cache-") as folder:
        store: str | EventStore = (
            MemoryEventStore() if kind == "memory" else _sqlite_url(Path(folder) / "prop.db")
        )

        async def scenario() -> None:
            model = await _run_steps(store, cache_size, retry, steps)
            async with _bank_app(store) as fresh:
                for account_id in _ACCOUNTS:
                    assert (await fresh.get(Account, account_id)).balance == model[account_id]

        asyncio.run(scenario())
