"""Snapshots through the Application, on the memory store, a SQLite file and PostgreSQL.

A snapshot may make a load shorter, never wrong: every test compares the loaded state with
a full replay of the same stream. Reads are counted by wrapping the open store's methods,
never by timing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from obelisk.application import Application, LoadBudget, SnapshotPolicy
from obelisk.demo.bank import Account, Deposit, OpenAccount, register_bank_handlers
from obelisk.domain import Event
from obelisk.domain.state import state_codec
from obelisk.store import EventStore, MemoryEventStore, Snapshot, SQLiteEventStore
from obelisk.store.postgres import PostgresEventStore


class StoreMaker:
    """Opens stores over one database: two may be open at once except on memory."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None, schema: str | None) -> None:
        self.kind = kind
        self._path = tmp_path / "snapshots.db"
        self._memory = MemoryEventStore()
        self._dsn, self._schema = dsn, schema

    def store(self) -> EventStore:
        if self.kind == "memory":
            return self._memory
        if self.kind == "sqlite":
            return SQLiteEventStore(self._path)
        assert self._dsn is not None and self._schema is not None
        return PostgresEventStore(self._dsn, schema=self._schema, pool_min_size=1)

    def app(self, **kwargs: Any) -> Application:
        return register_bank_handlers(Application(self.store(), **kwargs))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def maker(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> Iterator[StoreMaker]:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        yield StoreMaker("postgresql", tmp_path, dsn, schema)
    else:
        yield StoreMaker(str(request.param), tmp_path, None, None)


class ReadLog:
    """Records every ``read_stream_events`` call (stream and from_version) on a store."""

    def __init__(self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        real = store.read_stream_events

        async def logged(stream_id: str, **kwargs: Any) -> list[Event]:
            self.calls.append((stream_id, kwargs.get("from_version", 1)))
            return await real(stream_id, **kwargs)

        monkeypatch.setattr(store, "read_stream_events", logged)


async def _deposits(app: Application, account_id: str, amounts: range | list[int]) -> None:
    await app.handle(OpenAccount(account_id=account_id, owner="ada"))
    for amount in amounts:
        await app.handle(Deposit(account_id=account_id, amount=amount))


async def _replayed(app: Application, account_id: str) -> tuple[int, int, str]:
    """Balance, version and owner from a full replay, no snapshot involved."""
    events = await app.store.read_stream_events(account_id)
    account = Account.rebuild(account_id, events)
    return account.balance, account.version, account.owner


def _state(account: Account) -> tuple[int, int, str]:
    return account.balance, account.version, account.owner


# -- taking snapshots ------------------------------------------------------------------------


async def test_every_n_events_a_snapshot_is_saved_in_the_background(maker: StoreMaker) -> None:
    async with maker.app(snapshots=SnapshotPolicy(every=10)) as app:
        await _deposits(app, "acct-1", range(1, 9))  # versions 1..9: none due yet
        await app.snapshotter.drain()
        assert await app.store.load_snapshot("acct-1") is None

        await app.handle(Deposit(account_id="acct-1", amount=9))  # version 10: due
        # The command returned before its snapshot was written: it waited for nothing.
        assert app.snapshotter.pending == 1
        assert await app.store.load_snapshot("acct-1") is None
        await app.snapshotter.drain()
        snapshot = await app.store.load_snapshot("acct-1")
        assert snapshot is not None
        assert (snapshot.version, snapshot.aggregate_type, snapshot.schema_version) == (
            10, "Account", 1,
        )  # fmt: skip
        decoded = state_codec(Account).decode("acct-1", snapshot.version, snapshot.state)
        assert isinstance(decoded, Account)
        assert _state(decoded) == (45, 10, "ada")

        # The next one is due ten events later, not on every commit.
        await _more(app, "acct-1", 9)
        await app.snapshotter.drain()
        assert (await _snapshot_version(app, "acct-1")) == 10
        await _more(app, "acct-1", 1)
        await app.snapshotter.drain()
        assert (await _snapshot_version(app, "acct-1")) == 20
        assert app.snapshotter.taken == 2


async def _more(app: Application, account_id: str, count: int) -> None:
    for _ in range(count):
        await app.handle(Deposit(account_id=account_id, amount=1))


async def _snapshot_version(app: Application, account_id: str) -> int | None:
    snapshot = await app.store.load_snapshot(account_id)
    return None if snapshot is None else snapshot.version


async def test_a_load_reads_the_snapshot_and_only_the_events_after_it(
    maker: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with maker.app(snapshots=SnapshotPolicy(every=10)) as app:
        await _deposits(app, "acct-1", range(1, 20))  # version 20: a snapshot is due
        await app.snapshotter.drain()
        assert await _snapshot_version(app, "acct-1") == 20
        await _more(app, "acct-1", 5)  # version 25: none due
        await app.snapshotter.drain()
        expected = await _replayed(app, "acct-1")
    async with maker.app(snapshots=SnapshotPolicy(every=10)) as app:
        reads = ReadLog(app.store, monkeypatch)
        handed: list[tuple[int | None, int]] = []
        real = app.store.load_from_snapshot

        async def logged(stream_id: str) -> tuple[Snapshot | None, list[Event]]:
            snapshot, events = await real(stream_id)
            handed.append((None if snapshot is None else snapshot.version, len(events)))
            return snapshot, events

        monkeypatch.setattr(app.store, "load_from_snapshot", logged)
        account = await app.get(Account, "acct-1")
        assert _state(account) == expected == (195, 25, "ada")
        # From the snapshot's own version (that event proves the stream reaches it): six
        # events, versions 20 to 25, and never a read from the first event.
        assert handed == [(20, 6)]
        assert all(from_version == 20 for _, from_version in reads.calls), reads.calls
        stats = app.loading.stats["Account"]
        assert (stats.loads, stats.snapshot_hits, stats.events_replayed) == (1, 1, 5)


async def test_without_a_policy_no_snapshot_is_taken_or_read(
    maker: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with maker.app() as app:
        await _deposits(app, "acct-1", range(1, 30))
        await app.snapshotter.drain()
        assert await app.store.load_snapshot("acct-1") is None
        calls: list[str] = []
        real = app.store.load_snapshot

        async def counted(stream_id: str) -> Snapshot | None:
            calls.append(stream_id)
            return await real(stream_id)

        monkeypatch.setattr(app.store, "load_snapshot", counted)
        app.cache.clear()
        await app.get(Account, "acct-1")
        assert calls == []


async def test_a_slow_load_asks_for_a_snapshot_under_a_load_cost_policy(
    maker: StoreMaker,
) -> None:
    async with maker.app() as app:
        await _deposits(app, "acct-1", range(1, 6))
    # Any load is slower than a nanosecond: the policy fires on the first one.
    async with maker.app(snapshots=SnapshotPolicy(every=None, load_seconds=1e-9)) as app:
        account = await app.get(Account, "acct-1")
        await app.snapshotter.drain()
        assert await _snapshot_version(app, "acct-1") == account.version == 6


async def test_a_type_configured_alone_is_snapshotted_and_others_are_not(
    maker: StoreMaker,
) -> None:
    class Savings(Account):
        aggregate_type = "test_snapshots.Savings"

    async with maker.app() as app:
        app.configure(Account, snapshots=SnapshotPolicy(every=3))
        await _deposits(app, "acct-1", range(1, 4))
        await app.snapshotter.drain()
        assert await _snapshot_version(app, "acct-1") == 4
        assert app.loading.policy(Savings) is None


async def test_a_hundred_concurrent_commands_on_one_aggregate_equal_serial_execution(
    maker: StoreMaker,
) -> None:
    async with maker.app(snapshots=SnapshotPolicy(every=7)) as app:
        await app.handle(OpenAccount(account_id="hot", owner="ada"))
        await asyncio.gather(
            *(app.handle(Deposit(account_id="hot", amount=n)) for n in range(1, 101))
        )
        await app.snapshotter.drain()
        assert await _replayed(app, "hot") == (5050, 101, "ada")
        # Each snapshot holds exactly the replayed state at its own version.
        snapshot = await app.store.load_snapshot("hot")
        assert snapshot is not None and snapshot.version >= 95
        decoded = state_codec(Account).decode("hot", snapshot.version, snapshot.state)
        events = await app.store.read_stream_events("hot", to_version=snapshot.version)
        assert vars(decoded) == vars(Account.rebuild("hot", events)) | {"_snapshot_version": 0}
    async with maker.app(snapshots=SnapshotPolicy(every=7)) as fresh:
        assert _state(await fresh.get(Account, "hot")) == (5050, 101, "ada")


# -- unusable snapshots are ignored, never trusted -------------------------------------------


class _Bad:
    """Ways a stored snapshot can be unusable, each with the reason the loader gives."""

    cases: ClassVar[dict[str, tuple[str, int, int, bytes | None]]] = {
        # name: (aggregate_type, schema_version, version, state or None for a valid one)
        "corrupt": ("Account", 1, 5, b"\xc1 not msgpack"),
        "wrong-shape": ("Account", 1, 5, b"\x81\xa5owner\x07"),  # {"owner": 7}
        "other-type": ("Other", 1, 5, None),
        "other-schema": ("Account", 2, 5, None),
        "past-the-head": ("Account", 1, 50, None),
    }


@pytest.mark.parametrize("case", list(_Bad.cases))
async def test_an_unusable_snapshot_is_ignored_with_a_warning_and_the_stream_replayed(
    maker: StoreMaker, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    aggregate_type, schema_version, version, state = _Bad.cases[case]
    async with maker.app() as app:
        await _deposits(app, "acct-1", range(1, 10))  # version 10
        expected = await _replayed(app, "acct-1")
        if state is None:  # a valid state, stored under the wrong label or version
            good = await app.get(Account, "acct-1", version=5)
            state = state_codec(Account).encode(good)
        await app.store.save_snapshots(
            [Snapshot("acct-1", version, aggregate_type, schema_version, state, 0.0)]
        )
    async with maker.app(snapshots=SnapshotPolicy(every=1000)) as app:
        with caplog.at_level(logging.WARNING, logger="obelisk.loading"):
            account = await app.get(Account, "acct-1")
        assert _state(account) == expected
        stats = app.loading.stats["Account"]
        assert (stats.snapshot_hits, stats.snapshots_ignored) == (0, 1)
        assert any("ignored" in r.getMessage() for r in caplog.records), caplog.text
        record = next(r for r in caplog.records if "ignored" in r.getMessage())
        assert record.__dict__["aggregate_id"] == "acct-1"
        # A snapshot past the head is deleted, so newer ones can be saved again.
        stored = await app.store.load_snapshot("acct-1")
        assert (stored is None) == (case == "past-the-head")


async def test_a_snapshot_at_the_head_loads_with_no_event_after_it(maker: StoreMaker) -> None:
    async with maker.app(snapshots=SnapshotPolicy(every=5)) as app:
        await _deposits(app, "acct-1", range(1, 5))  # version 5, snapshot due at 5
        await app.snapshotter.drain()
        assert await _snapshot_version(app, "acct-1") == 5
    async with maker.app(snapshots=SnapshotPolicy(every=5)) as app:
        assert _state(await app.get(Account, "acct-1")) == (10, 5, "ada")
        assert app.loading.stats["Account"].snapshot_hits == 1


# -- as of a version, as of a time ----------------------------------------------------------


async def test_as_of_a_version_uses_a_snapshot_only_at_or_below_it(maker: StoreMaker) -> None:
    async with maker.app(snapshots=SnapshotPolicy(every=10)) as app:
        await _deposits(app, "acct-1", range(1, 10))  # version 10: a snapshot is due
        await app.snapshotter.drain()
        await _more(app, "acct-1", 5)  # version 15
        await app.snapshotter.drain()
        assert await _snapshot_version(app, "acct-1") == 10
    async with maker.app(snapshots=SnapshotPolicy(every=10)) as app:
        assert _state(await app.get(Account, "acct-1", version=12)) == (47, 12, "ada")
        assert app.loading.stats["Account"].snapshot_hits == 1
        assert _state(await app.get(Account, "acct-1", version=7)) == (21, 7, "ada")
        assert app.loading.stats["Account"].snapshot_hits == 1  # below it: replayed


async def test_as_of_a_time_loads_the_events_recorded_by_then(maker: StoreMaker) -> None:
    async with maker.app() as app:
        await _deposits(app, "acct-1", [5, 7])
        stored = await app.store.read_stream("acct-1")
        cut = stored[1].recorded_at
        assert _state(await app.get(Account, "acct-1", as_of=cut)) == (5, 2, "ada")
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(stored[-1].recorded_at + 0.001, UTC)
        assert _state(await app.get(Account, "acct-1", as_of=when)) == (12, 3, "ada")
        with pytest.raises(ValueError, match="timezone"):
            await app.get(Account, "acct-1", as_of=datetime(2020, 1, 1))
        from obelisk.errors import AggregateNotFound

        with pytest.raises(AggregateNotFound):
            await app.get(Account, "acct-1", as_of=stored[0].recorded_at - 3600)


# -- budgets ---------------------------------------------------------------------------------


async def test_a_load_over_its_event_budget_is_logged_and_counted(
    maker: StoreMaker, caplog: pytest.LogCaptureFixture
) -> None:
    async with maker.app(load_budget=LoadBudget(max_events=5)) as app:
        await _deposits(app, "small", range(1, 4))  # 4 events
        await _deposits(app, "large", range(1, 9))  # 9 events
        app.cache.clear()
        with caplog.at_level(logging.WARNING, logger="obelisk.loading"):
            await app.get(Account, "small")
            await app.get(Account, "large")
        over = [r for r in caplog.records if "over its load budget" in r.getMessage()]
        assert [r.__dict__["aggregate_id"] for r in over] == ["large"]
        assert over[0].__dict__["events_replayed"] == 9
        assert app.loading.stats["Account"].over_budget == 1


async def test_a_snapshot_brings_a_large_aggregate_back_within_its_budget(
    maker: StoreMaker, caplog: pytest.LogCaptureFixture
) -> None:
    policy, budget = SnapshotPolicy(every=5), LoadBudget(max_events=5)
    async with maker.app(snapshots=policy, load_budget=budget) as app:
        await _deposits(app, "acct-1", range(1, 12))  # version 12, snapshot at 10
        await app.snapshotter.drain()
    async with maker.app(snapshots=policy, load_budget=budget) as app:
        with caplog.at_level(logging.WARNING, logger="obelisk.loading"):
            await app.get(Account, "acct-1")
        assert app.loading.stats["Account"].over_budget == 0
        assert not [r for r in caplog.records if "budget" in r.getMessage()]


# -- the cache in fast-forward mode ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> Iterator[StoreMaker]:
    """A database two Applications can have open at once, as two processes would."""
    if request.param == "postgresql":
        yield StoreMaker(
            "postgresql", tmp_path, request.getfixturevalue("postgres_dsn"),
            request.getfixturevalue("pg_schema"),
        )  # fmt: skip
    else:
        yield StoreMaker("sqlite", tmp_path, None, None)


@pytest.fixture
async def two_apps(shared: StoreMaker) -> AsyncIterator[tuple[Application, Application]]:
    async with (
        shared.app(cache_mode="fast-forward") as ours,
        shared.app() as theirs,
    ):
        yield ours, theirs


async def test_fast_forward_applies_another_writers_events_to_the_cached_aggregate(
    two_apps: tuple[Application, Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = two_apps
    await _deposits(ours, "acct-1", [1])  # cached in ours at version 2
    await theirs.handle(Deposit(account_id="acct-1", amount=10))
    await theirs.handle(Deposit(account_id="acct-1", amount=100))
    reads = ReadLog(ours.store, monkeypatch)

    # In "trust" mode this would fail with ConcurrencyError; here it reads versions 3..
    await ours.handle(Deposit(account_id="acct-1", amount=1000))
    assert reads.calls == [("acct-1", 3)]
    assert ours.cache.hits >= 1
    cached = await ours.get(Account, "acct-1")
    assert _state(cached) == (1111, 5, "ada")

    reads.calls.clear()
    await ours.handle(Deposit(account_id="acct-1", amount=1))  # nothing new: an empty read
    assert reads.calls == [("acct-1", 6)]


async def test_trust_mode_fails_a_stale_cached_aggregate_once_then_loads_afresh(
    shared: StoreMaker,
) -> None:
    from obelisk.errors import ConcurrencyError

    async with shared.app() as ours, shared.app() as theirs:
        await _deposits(ours, "acct-1", [1])
        await theirs.handle(Deposit(account_id="acct-1", amount=10))
        with pytest.raises(ConcurrencyError):
            await ours.handle(Deposit(account_id="acct-1", amount=1000))
        await ours.handle(Deposit(account_id="acct-1", amount=1000))  # evicted: reloaded
        assert _state(await ours.get(Account, "acct-1")) == (1011, 4, "ada")


# -- two processes, both with caches ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["trust", "fast-forward"])
async def test_two_processes_with_caches_writing_one_aggregate_lose_no_update(
    shared: StoreMaker, mode: str, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'snapshots.db'}"
        if shared.kind == "sqlite"
        else f"{shared._dsn}?schema={shared._schema}"
    )
    async with shared.app() as app:
        await app.handle(OpenAccount(account_id="shared", owner="ada"))
    script = Path(__file__).with_name("_cached_writer.py")
    count = 150
    pipe = asyncio.subprocess.PIPE
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(script), url, "shared", str(count), str(amount), mode,
            stdin=pipe, stdout=pipe, stderr=pipe,
        )
        for amount in (1, 1000)
    ]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        await writer.stdin.drain()
    outputs = [await asyncio.wait_for(w.communicate(), 120) for w in writers]
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err.decode()
        assert out.startswith(b"done"), out
    conflicts = sum(int(out.split()[1]) for out, _ in outputs)
    assert conflicts > 0, "the two processes never wrote at once: the test proves nothing"
    async with shared.app(snapshots=SnapshotPolicy(every=5)) as app:
        # Every deposit of both processes is there exactly once: no update was lost.
        assert await _replayed(app, "shared") == (count * 1001, 1 + 2 * count, "ada")
        assert _state(await app.get(Account, "shared")) == (count * 1001, 1 + 2 * count, "ada")


async def test_a_corrupt_event_after_the_snapshot_is_named_not_skipped(
    shared: StoreMaker,
) -> None:
    from obelisk.errors import CorruptEvent

    async with shared.app(snapshots=SnapshotPolicy(every=2)) as app:
        await _deposits(app, "acct-1", [1, 2])  # versions 1..3, a snapshot at 2 or 3
        await app.snapshotter.drain()
        # Pin the snapshot at 2, so that version 3 is read after it.
        await app.store.delete_snapshot("acct-1", 3)
        first_two = await app.store.read_stream_events("acct-1", to_version=2)
        state = state_codec(Account).encode(Account.rebuild("acct-1", first_two))
        await app.store.save_snapshots([Snapshot("acct-1", 2, "Account", 1, state, 0.0)])
        assert await _snapshot_version(app, "acct-1") == 2
    await _corrupt_version_3(shared)
    async with shared.app(snapshots=SnapshotPolicy(every=1000)) as app:
        with pytest.raises(CorruptEvent, match="version 3"):
            await app.get(Account, "acct-1")


async def _corrupt_version_3(shared: StoreMaker) -> None:
    sql = "UPDATE {t} SET data = {v} WHERE stream_id = 'acct-1' AND version = 3"
    if shared.kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(shared._path)
        with conn:
            conn.execute(sql.format(t="obelisk_events", v="x'ff00'"))
        conn.close()
    else:
        import asyncpg

        pg = await asyncpg.connect(shared._dsn)
        try:
            await pg.execute(sql.format(t=f'"{shared._schema}".obelisk_events', v="'\\xff00'"))
        finally:
            await pg.close()
