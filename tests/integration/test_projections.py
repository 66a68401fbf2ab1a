"""Projections against real databases: SQLite files and PostgreSQL, each test on both.

Every read model is compared with a fold of the log computed here, independently of the
projection's own code: ``balance`` and ``credits`` grow by increments, so an event applied
twice or not at all shows up as a wrong number. Waits are bounded (``WAIT``) and wait for
a condition (a position reached, a refused commit seen), never for time to pass.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import pytest

from obelisk.errors import CorruptEvent, ValidationError
from obelisk.projections import (
    Context,
    ProjectionError,
    ProjectionRunner,
    ProjectionWorker,
    ReadStore,
    fetch_page,
    handles,
    keyset_sql,
    partition_of,
    read_store_from_url,
    rebuild,
    wait_for_position,
)
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.projections.readstore import Claim
from obelisk.store import NO_STREAM, AppendRequest, StoredEvent
from obelisk.store.base import EventStore

from ._projection_helpers import (
    NAME,
    WAIT,
    Backend,
    applied_rows,
    assert_exactly_once,
    fold,
    ledger_rows,
    open_backend,
    reach,
    read_everything,
    running,
    spy,
    until,
    visible,
    write_ledgers,
)
from ._projection_worker import Ledger, LedgerCredited, LedgerNoted, LedgerOpened


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]) -> Backend:
    return open_backend(request, tmp_path)


# -- catching up and following ----------------------------------------------------------------


async def test_a_projection_catches_up_to_a_fold_of_the_log_then_follows_live_commits(
    backend: Backend,
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        head = await write_ledgers(store, 30, 6, noted=True)
        # Pages smaller than the log: catching up takes several batches (with prefetch).
        runner = ProjectionRunner(Ledger(), store, read_store, page_size=64, poll_interval=0.05)
        async with running(runner) as task:
            await reach(runner, task, head)
            assert await ledger_rows(read_store) == fold(await read_everything(store))
            assert runner.caught_up

            before = (await ledger_rows(read_store))["l-3"]
            live = await store.append("l-3", [LedgerCredited(amount=1000)])
            await reach(runner, task, live.last_position)
            assert await wait_for_position(read_store, NAME, live.last_position, timeout=WAIT)
            owner, balance, credits, _ = before
            assert (await ledger_rows(read_store))["l-3"] == (
                owner, balance + 1000, credits + 1, live.version,
            )  # fmt: skip

            # A new stream, written by another store object (as another process would).
            async with backend.event_store() as other:
                new = await other.append("l-new", [LedgerOpened(owner="o-9")], NO_STREAM)
                assert await wait_for_position(read_store, NAME, new.last_position, timeout=WAIT)
            await assert_exactly_once(store, read_store)
            assert (await runner.lag()).positions == 0


# -- events a projection does not declare -----------------------------------------------------


async def test_undeclared_events_are_not_read_and_the_checkpoint_passes_them(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        pages = spy(monkeypatch, store, "read_all")
        await store.append(
            "l-1",
            [LedgerOpened(owner="ann"), LedgerNoted(text="x"), LedgerCredited(amount=5)],
            NO_STREAM,
        )
        # The log ends with events the projection does not declare.
        tail = await store.append("l-1", [LedgerNoted(text="y"), LedgerNoted(text="z")])
        runner = ProjectionRunner(Ledger(), store, read_store, poll_interval=0.05)
        async with running(runner) as task:
            await reach(runner, task, tail.last_position)
            assert await wait_for_position(read_store, NAME, tail.last_position, timeout=WAIT)
        assert await read_store.live_position(NAME) == tail.last_position
        assert await ledger_rows(read_store) == {"l-1": ("ann", 5, 1, 3)}
        assert runner.events_applied == 2
        read = [e.event_type for _, page in pages for e in page]
        assert read, "the runner read nothing through the spied store"
        assert LedgerNoted.event_type not in read


async def test_an_undeclared_event_that_reaches_a_runner_anyway_is_skipped(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        real = store.read_all
        delivered: list[str] = []

        async def ignoring_types(
            *,
            after: int = 0,
            limit: int = 1000,
            types: Iterable[str] | None = None,
            keep_undecodable: bool = False,
        ) -> list[StoredEvent]:
            # Every type, whatever was asked.
            page = await real(after=after, limit=limit, keep_undecodable=keep_undecodable)
            delivered.extend(e.event_type for e in page)
            return page

        monkeypatch.setattr(store, "read_all", ignoring_types)
        head = await write_ledgers(store, 4, 3, noted=True)
        runner = ProjectionRunner(Ledger(), store, read_store, poll_interval=0.05)
        async with running(runner) as task:
            await reach(runner, task, head)
        assert LedgerNoted.event_type in delivered
        assert runner.events_applied == 4 + 4 * 3
        await assert_exactly_once(store, read_store)


# -- poison events -------------------------------------------------------------------------------

POISON = 13  # the amount the failing handlers choke on


class RaisingLedger(Ledger):
    """The handler raises."""

    @handles(LedgerCredited)
    async def credited(self, event: LedgerCredited, ctx: Context) -> None:
        if event.amount == POISON:
            raise RuntimeError(f"amount {POISON} is unlucky")
        await super().credited(event, ctx)


class SqlFailingLedger(Ledger):
    """The handler's own SQL breaks a constraint (a second row with the ledger's key)."""

    @handles(LedgerCredited)
    async def credited(self, event: LedgerCredited, ctx: Context) -> None:
        if event.amount == POISON:
            await ctx.execute(
                f"INSERT INTO {ctx.table(self.ledgers)} (id) VALUES ({self.placeholder})",
                ctx.stream_id,
            )
        await super().credited(event, ctx)


class FlushFailingLedger(Ledger):
    """The handler stages a row the database refuses at the flush (a NULL key): the
    runner must narrow the failed batch down to this event."""

    @handles(LedgerCredited)
    async def credited(self, event: LedgerCredited, ctx: Context) -> None:
        if event.amount == POISON:
            ctx.upsert(self.ledgers, id=None, owner="nobody")
        await super().credited(event, ctx)


POISONS = pytest.mark.parametrize(
    ("poisoned", "error_text"),
    [
        (RaisingLedger, f"RuntimeError: amount {POISON} is unlucky"),
        (SqlFailingLedger, "constraint"),
        (FlushFailingLedger, "constraint"),
    ],
    ids=["handler-raises", "handler-sql-fails", "flush-fails"],
)


async def write_poisoned_log(store: EventStore) -> dict[str, int]:
    """Two ledgers; ``b`` version 2 is the poison, with events before and after it."""
    await store.append(
        "a", [LedgerOpened(owner="ann"), LedgerCredited(amount=1), LedgerCredited(amount=2)]
    )
    b = await store.append(
        "b",
        [LedgerOpened(owner="bob"), LedgerCredited(amount=POISON), LedgerCredited(amount=4)],
    )
    after = await store.append("a", [LedgerCredited(amount=5)])
    await visible(store, after.last_position)
    return {
        "before": b.first_position,  # b's opening: the last event before the poison
        "poison": b.first_position + 1,
        "head": after.last_position,
    }


def make(poisoned: type[Ledger], backend: Backend) -> Ledger:
    return poisoned(placeholder=backend.placeholder)


@POISONS
async def test_a_poison_event_under_the_stop_policy_raises_after_applying_the_events_before_it(
    backend: Backend, poisoned: type[Ledger], error_text: str
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        at = await write_poisoned_log(store)
        runner = ProjectionRunner(
            make(poisoned, backend), store, read_store, poll_interval=0.05, lease_seconds=0.5
        )
        with pytest.raises(ProjectionError) as info:
            await asyncio.wait_for(runner.run(), WAIT)
        error = info.value
        assert (error.projection, error.stream_id, error.position, error.version) == (
            NAME, "b", at["poison"], 2,
        )  # fmt: skip
        assert error.event_type == LedgerCredited.event_type
        assert f"position {at['poison']}" in str(error)
        assert error_text in str(error)

        # Everything before it is applied, nothing after it; the checkpoint sits just before.
        applied = {"a": ("ann", 3, 2, 3), "b": ("bob", 0, 0, 1)}
        assert await ledger_rows(read_store) == applied
        assert await read_store.live_position(NAME) == at["before"]

        # A restarted runner (another owner: it waits out the dead one's lease) stops again
        # at the same event, and applies nothing more.
        again = ProjectionRunner(
            make(poisoned, backend), store, read_store, poll_interval=0.05, lease_seconds=0.5
        )
        with pytest.raises(ProjectionError) as info:
            await asyncio.wait_for(again.run(), WAIT)
        assert (info.value.stream_id, info.value.position) == ("b", at["poison"])
        assert await ledger_rows(read_store) == applied
        assert await read_store.live_position(NAME) == at["before"]


@POISONS
async def test_a_poison_event_under_the_dead_letter_policy_is_recorded_and_the_runner_goes_on(
    backend: Backend, poisoned: type[Ledger], error_text: str
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        at = await write_poisoned_log(store)
        runner = ProjectionRunner(
            make(poisoned, backend),
            store,
            read_store,
            on_error="dead-letter",
            poll_interval=0.05,
        )
        async with running(runner) as task:
            await reach(runner, task, at["head"])
            # The rest of the page is applied: a's last credit and b's credit after the poison.
            assert await ledger_rows(read_store) == {"a": ("ann", 8, 3, 4), "b": ("bob", 4, 1, 3)}
            letters = await read_store.dead_letters(NAME)
            assert len(letters) == 1
            letter = letters[0]
            assert (letter.projection, letter.stream_id, letter.version, letter.position) == (
                NAME, "b", 2, at["poison"],
            )  # fmt: skip
            assert letter.event_type == LedgerCredited.event_type
            assert error_text in letter.error
            assert runner.dead_lettered == 1

            # It goes on with new events.
            more = await store.append("b", [LedgerCredited(amount=6)])
            await reach(runner, task, more.last_position)
            assert (await ledger_rows(read_store))["b"] == ("bob", 10, 2, 4)
        assert len(await read_store.dead_letters(NAME)) == 1


# -- a corrupt row in the log -----------------------------------------------------------------


async def write_then_damage(backend: Backend, store: EventStore) -> int:
    """Ledger ``l-1`` with four events; version 3's payload is destroyed. Its position."""
    result = await store.append(
        "l-1",
        [
            LedgerOpened(owner="ann"),
            LedgerCredited(amount=1),
            LedgerCredited(amount=2),
            LedgerCredited(amount=4),
        ],
        NO_STREAM,
    )
    await backend.damage_event("l-1", 3)
    await visible(store, result.last_position)
    return result.first_position + 2


async def test_a_corrupt_event_stops_a_catch_up_naming_its_position_and_is_not_skipped(
    backend: Backend,
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        corrupt = await write_then_damage(backend, store)
        # Pages of two: the first page (before the corrupt row) is applied.
        runner = ProjectionRunner(Ledger(), store, read_store, page_size=2)
        with pytest.raises(CorruptEvent) as info:
            await asyncio.wait_for(runner.run_until_caught_up(), WAIT)
        assert (info.value.stream_id, info.value.version, info.value.position) == (
            "l-1", 3, corrupt,
        )  # fmt: skip
        assert f"position {corrupt}" in str(info.value)
        assert await ledger_rows(read_store) == {"l-1": ("ann", 1, 1, 2)}
        checkpoint = await read_store.live_position(NAME)
        assert checkpoint is not None and checkpoint < corrupt

        # Not skipped on a second try either (the same owner: its lease is still held).
        again = ProjectionRunner(Ledger(), store, read_store, page_size=2, owner=runner.owner)
        with pytest.raises(CorruptEvent):
            await asyncio.wait_for(again.run_until_caught_up(), WAIT)
        assert await read_store.live_position(NAME) == checkpoint


@pytest.mark.parametrize("kind", ["runner", "worker"])
async def test_a_corrupt_event_stops_a_live_projection_with_an_error_naming_its_position(
    backend: Backend, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        corrupt = await write_then_damage(backend, store)
        real = store.read_all
        failed_reads = 0

        async def counted(**kwargs: Any) -> list[StoredEvent]:
            nonlocal failed_reads
            try:
                return await real(**kwargs)
            except CorruptEvent:
                failed_reads += 1
                raise

        monkeypatch.setattr(store, "read_all", counted)
        live: ProjectionRunner | ProjectionWorker
        if kind == "runner":
            live = ProjectionRunner(Ledger(), store, read_store, poll_interval=0.05)
        else:
            live = ProjectionWorker(
                Ledger(), store, read_store, partitions=2, lease_seconds=1.0, poll_interval=0.05
            )
        task = asyncio.create_task(live.run())
        try:
            # It stops at the row, or (the bug) reads it again and again.
            await until(lambda: task.done() or failed_reads >= 3, "it stops or retries")
        finally:
            live.stop()  # stop, not cancel: a retrying runner can lose a cancellation
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT)
        error = task.exception()
        # Either the store's CorruptEvent or a ProjectionError: both name the position.
        assert isinstance(error, CorruptEvent | ProjectionError), f"{failed_reads} reads; {error!r}"
        assert getattr(error, "position", None) == corrupt
        assert f"position {corrupt}" in str(error)
        checkpoint = await read_store.live_position(NAME)
        assert checkpoint is not None and checkpoint < corrupt


# -- two runners, one partition ---------------------------------------------------------------


async def test_two_runners_of_one_partition_one_applies_and_the_other_takes_over_when_it_stops(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(backend.event_store())
        read_stores = [await stack.enter_async_context(backend.read_store()) for _ in "ab"]
        head = await write_ledgers(store, 20, 5)
        claims = [spy(monkeypatch, rs, "claim") for rs in read_stores]
        advances = [spy(monkeypatch, rs, "advance") for rs in read_stores]
        runners = [
            ProjectionRunner(
                Ledger(worker=owner),
                store,
                rs,
                owner=owner,
                page_size=16,
                lease_seconds=5.0,
                poll_interval=0.05,
            )
            for owner, rs in zip("ab", read_stores, strict=True)
        ]
        tasks = [asyncio.create_task(r.run()) for r in runners]  # both at once
        try:

            def settled() -> bool:
                caught_up = [i for i, r in enumerate(runners) if r.position >= head]
                return len(caught_up) == 1 and refused(claims[1 - caught_up[0]])

            await until(settled, "one runner caught up and the other was refused the lease")
            holder = 0 if runners[0].position >= head else 1
            other = 1 - holder
            # The stand-by never got to commit anything: no checkpoint update at all.
            assert advances[other] == []
            assert runners[other].events_applied == 0
            more = await write_ledgers(store, 5, 2, prefix="m")
            await reach(runners[holder], tasks[holder], more)
            assert advances[other] == []
            await assert_exactly_once(store, read_stores[holder])
            assert {r[3] for r in await applied_rows(read_stores[holder])} == {"ab"[holder]}

            # A graceful stop releases the lease: the stand-by takes over, from its checkpoint.
            runners[holder].stop()
            await asyncio.wait_for(tasks[holder], WAIT)
            last = await write_ledgers(store, 5, 2, prefix="n")
            await reach(runners[other], tasks[other], last)
            await assert_exactly_once(store, read_stores[other])
            applied = await applied_rows(read_stores[other])
            assert {r[3] for r in applied if r[2] > more} == {"ab"[other]}
            assert {r[3] for r in applied if r[2] <= more} == {"ab"[holder]}
        finally:
            for runner in runners:
                runner.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        for task in tasks:
            task.result()


def refused(calls: list[tuple[tuple[Any, ...], Any]]) -> bool:
    return any(result is None for _, result in calls)


async def test_a_runner_whose_lease_was_taken_over_commits_nothing(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        await rebuild_free_start(store, read_store)
        stale = await read_store.claim(NAME, 1, 0, "stale", 0.05)
        assert stale is not None
        current = await claim_when_free(read_store, "current")
        assert current.epoch > stale.epoch
        await write_ledgers(store, 10, 3)

        # The stale owner applies its batch but the checkpoint update is refused: the whole
        # batch rolls back, and serve() returns (fenced off) without releasing anything.
        advances = spy(monkeypatch, read_store, "advance")
        runner = ProjectionRunner(Ledger(), store, read_store, owner="stale")
        await asyncio.wait_for(runner.serve(stale), WAIT)
        assert [result for _, result in advances] == [False]
        assert runner.events_applied == 0
        assert await ledger_rows(read_store) == {}
        [checkpoint] = await read_store.checkpoints(NAME)
        assert (checkpoint.position, checkpoint.owner) == (0, "current")

        # The current owner commits.
        runner = ProjectionRunner(Ledger(), store, read_store, owner="current")
        await asyncio.wait_for(runner.serve(current, until_caught_up=True), WAIT)
        await assert_exactly_once(store, read_store)


async def rebuild_free_start(store: EventStore, read_store: ReadStore) -> None:
    """Register the projection (generation 1) by running it once over the empty log."""
    first = ProjectionRunner(Ledger(), store, read_store)
    assert await asyncio.wait_for(first.run_until_caught_up(), WAIT) == 0


async def claim_when_free(read_store: ReadStore, owner: str) -> Claim:
    deadline = time.monotonic() + WAIT
    while True:
        claim = await read_store.claim(NAME, 1, 0, owner, 30.0)
        if claim is not None:
            return claim
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.02)


# -- partitioned workers -------------------------------------------------------------------------


async def test_partitioned_workers_own_each_partition_once_and_take_over_a_crashed_ones(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    partitions, lease = 4, 1.5
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(backend.event_store())
        monitor = await stack.enter_async_context(backend.read_store())
        head = await write_ledgers(store, 24, 3)
        workers: list[ProjectionWorker] = []
        for worker_id in ("w1", "w2", "w3"):
            # Each worker with its own connections, as in its own process.
            worker = ProjectionWorker(
                # Every event checks it is its stream's next version: order holds per stream.
                Ledger(check_order=True, placeholder=backend.placeholder, worker=worker_id),
                await stack.enter_async_context(backend.event_store()),
                await stack.enter_async_context(backend.read_store()),
                partitions=partitions,
                worker_id=worker_id,
                page_size=16,
                lease_seconds=lease,
                poll_interval=0.05,
            )
            workers.append(worker)
        tasks = {w.worker_id: asyncio.create_task(w.run()) for w in workers}
        try:
            assert await wait_for_position(monitor, NAME, head, timeout=WAIT)

            def each_partition_once(live: list[ProjectionWorker]) -> bool:
                owned = sorted(p for w in live for p in w.owned)
                return owned == list(range(partitions))

            await until(lambda: each_partition_once(workers), "the workers share the partitions")
            victim = max(workers, key=lambda w: len(w.owned))
            survivors = [w for w in workers if w is not victim]

            # Crash the victim: its runners die mid-flight, nothing is released or left.
            async def nothing(*args: Any, **kwargs: Any) -> None:
                return None

            monkeypatch.setattr(victim.read_store, "release", nothing)
            monkeypatch.setattr(victim.read_store, "leave", nothing)
            for runner_task in list(victim._tasks.values()):
                runner_task.cancel()
            tasks[victim.worker_id].cancel()
            await asyncio.gather(tasks.pop(victim.worker_id), return_exceptions=True)
            now = time.time()
            expiry = {
                c.partition: now + (c.lease_seconds_left or 0.0)
                for c in await monitor.checkpoints(NAME)
                if c.owner == victim.worker_id
            }
            assert expiry, "the victim's leases ran out before it crashed: a too slow machine"

            more = await write_ledgers(store, 24, 2, prefix="m")
            assert await wait_for_position(monitor, NAME, more, timeout=WAIT)
            await until(lambda: each_partition_once(survivors), "the survivors share them all")
            for task in tasks.values():
                assert not task.done(), task  # a handler's order check would have stopped it
            owners = {c.partition: c.owner for c in await monitor.checkpoints(NAME)}
            assert set(owners.values()) <= {w.worker_id for w in survivors}

            await assert_exactly_once(store, monitor)
            for stream_id, version, position, worker, _, applied_at in await applied_rows(monitor):
                partition = partition_of(stream_id, partitions)
                if position > head and partition in expiry:
                    assert worker != victim.worker_id
                    # Taken over only once the dead worker's lease had run out.
                    assert applied_at >= expiry[partition] - 0.1, (stream_id, version)
        finally:
            for worker in workers:
                worker.stop()
            results = await asyncio.wait_for(
                asyncio.gather(*tasks.values(), return_exceptions=True), WAIT
            )
        assert [r for r in results if r is not None] == []
        # A graceful stop releases every lease.
        assert {c.owner for c in await monitor.checkpoints(NAME)} == {None}


# -- blue/green rebuild --------------------------------------------------------------------------


def scaled_ledger() -> type[Ledger]:
    """A Ledger whose credits count ``factor`` times; a fresh class per test, since the
    test changes its version and factor as a new deployment would."""

    class Scaled(Ledger):
        factor = 1

        @handles(LedgerCredited)
        async def credited(self, event: LedgerCredited, ctx: Context) -> None:
            await super().credited(LedgerCredited(amount=event.amount * self.factor), ctx)

    return Scaled


async def read_in_a_loop(
    backend: Backend, sql: str, stop: threading.Event, results: list[tuple[int, int]]
) -> None:
    """Run ``sql`` until ``stop``, on a connection of its own (SQLite: in a thread, so
    reads really run beside the rebuild's writes)."""
    if backend.kind == "sqlite":

        def loop() -> None:
            with closing(sqlite3.connect(backend.read_path)) as conn:
                while not stop.is_set():
                    count, total = conn.execute(sql).fetchone()
                    results.append((count, total))

        await asyncio.to_thread(loop)
        return
    async with backend.read_store() as reader:
        while not stop.is_set():
            [(count, total)] = await reader.query(sql)
            results.append((count, total))


async def test_a_rebuild_switches_generations_atomically_under_readers(
    backend: Backend,
) -> None:
    scaled = scaled_ledger()
    async with backend.event_store() as store, backend.read_store() as read_store:
        head = await write_ledgers(store, 40, 10)
        live = ProjectionRunner(scaled(), store, read_store, poll_interval=0.05, lease_seconds=1.5)
        async with running(live) as task:
            await reach(live, task, head)
            expected = fold(await read_everything(store))
            old = (len(expected), sum(row[1] for row in expected.values()))
            new = (old[0], old[1] * 10)
            view = read_store.qualified("ledgers")
            sql = f"SELECT COUNT(*), CAST(SUM(balance) AS BIGINT) FROM {view}"
            stop = threading.Event()
            seen: list[list[tuple[int, int]]] = [[], []]
            readers = [asyncio.create_task(read_in_a_loop(backend, sql, stop, s)) for s in seen]
            try:
                await until(lambda: all(seen), "the readers read")
                scaled.version = 2
                scaled.factor = 10
                progress: list[int] = []
                reads_before = sum(len(s) for s in seen)
                generation = await asyncio.wait_for(
                    rebuild(
                        scaled(),
                        store,
                        read_store,
                        page_size=40,
                        progress=lambda p: progress.append(p.position),
                    ),
                    WAIT,
                )
                during = sum(len(s) for s in seen) - reads_before
                await until(lambda: all(new in s[-3:] for s in seen), "the readers see it")
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*readers), WAIT)
            assert generation == 2
            assert len(progress) > 1, "the rebuild was one batch: nothing to read beside"
            results = {r for s in seen for r in s}
            # Every read saw the whole old model or the whole new one, nothing between.
            assert results == {old, new}, results - {old, new}
            assert during > 0, "no read ran while the rebuild did"

            # The old generation is gone; the new one has its index; the state says so.
            assert not await backend.relation_exists(read_store, "ledgers__1")
            assert not await backend.relation_exists(read_store, "applied__1")
            assert await backend.relation_exists(read_store, "ledgers__2")
            assert await backend.relation_exists(read_store, "ledgers__2_ix0")
            state = await read_store.state(NAME)
            assert state is not None
            assert (state.version, state.live_generation, state.building_generation) == (2, 2, None)
            assert {c.generation for c in await read_store.checkpoints(NAME)} == {2}

            # The live runner went on, on the new generation.
            one = await store.append("l-0", [LedgerCredited(amount=7)])
            await reach(live, task, one.last_position)
            assert live.generation == 2
            owner, balance, credits, _ = expected["l-0"]
            assert (await ledger_rows(read_store))["l-0"] == (
                owner, balance * 10 + 70, credits + 1, one.version,
            )  # fmt: skip


# -- pause and resume ----------------------------------------------------------------------------


async def test_a_paused_projection_applies_nothing_until_it_is_resumed(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        head = await write_ledgers(store, 5, 2)
        advances = spy(monkeypatch, read_store, "advance")
        runner = ProjectionRunner(Ledger(), store, read_store, poll_interval=0.05)
        async with running(runner) as task:
            await reach(runner, task, head)
            before = await ledger_rows(read_store)

            await read_store.set_paused(NAME, True)
            state = await read_store.state(NAME)
            assert state is not None and state.paused
            paused_at = len(advances)
            more = await write_ledgers(store, 5, 2, prefix="p")
            # The runner read (some of) the new events and tried to commit them: refused.
            await until(
                lambda: any(
                    args[2] > head and result is False for args, result in advances[paused_at:]
                ),
                "the paused runner's commit of the new events is refused",
            )
            assert not any(result for _, result in advances[paused_at:])
            assert await ledger_rows(read_store) == before
            assert await read_store.live_position(NAME) == head
            assert not await wait_for_position(read_store, NAME, more, timeout=0.2)

            await read_store.set_paused(NAME, False)
            await reach(runner, task, more)
            await assert_exactly_once(store, read_store)


# -- keyset pagination ---------------------------------------------------------------------------


async def projected(backend: Backend, store: EventStore, read_store: ReadStore) -> None:
    runner = ProjectionRunner(Ledger(), store, read_store, page_size=2000)
    await asyncio.wait_for(runner.run_until_caught_up(), WAIT)


async def walk(read_store: ReadStore, limit: int, **listing: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        page = await fetch_page(read_store, Ledger.ledgers, limit=limit, after=cursor, **listing)
        assert len(page.rows) <= limit
        rows.extend(page.rows)
        cursor = page.next_cursor
        if cursor is None:
            return rows
        assert page.rows, "an empty page with a next cursor"
    pytest.fail("the walk never ended")


async def test_walking_keyset_pages_returns_every_row_exactly_once_in_order(
    backend: Backend,
) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        await write_ledgers(store, 300, 0, owners=7)
        await projected(backend, store, read_store)
        table = await ledger_rows(read_store)
        ids = sorted(table)

        # By owner then id (the declared index), within one owner, both ways.
        mine = sorted(i for i in ids if table[i][0] == "o-3")
        rows = await walk(read_store, 9, order_by=("owner", "id"), where={"owner": "o-3"})
        assert [r["id"] for r in rows] == mine
        rows = await walk(
            read_store, 9, order_by=("owner", "id"), where={"owner": "o-3"}, direction="desc"
        )
        assert [r["id"] for r in rows] == mine[::-1]

        # The whole table by owner: pages cross from one owner to the next.
        rows = await walk(read_store, 41, order_by=("owner", "id"))
        assert [r["id"] for r in rows] == sorted(ids, key=lambda i: (table[i][0], i))
        assert rows[0] == {
            "id": rows[0]["id"], "owner": table[rows[0]["id"]][0], "balance": 0,
            "credits": 0, "last_version": 1,
        }  # fmt: skip

        # Ordered by a column every row shares: the key breaks the ties, still each once.
        rows = await walk(read_store, 50, order_by=("balance",))
        assert [r["id"] for r in rows] == ids


async def test_the_documented_listing_query_uses_its_declared_index(backend: Backend) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        await write_ledgers(store, 3000, 0, owners=3)
        await projected(backend, store, read_store)
        sql, order = keyset_sql(
            read_store, Ledger.ledgers, order_by=("owner", "id"), where={"owner": "o-1"}, after=True
        )
        assert order == ("owner", "id")
        params = ("o-1", "o-1", "l-1000", 21)  # the where value, the cursor, the limit
        index = "ledgers__1_ix0"
        if backend.kind == "sqlite":
            plan = " / ".join(
                str(row[-1]) for row in await read_store.query(f"EXPLAIN QUERY PLAN {sql}", *params)
            )
            assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # the index gives the order: no sort
        else:
            # The planner's steady state: with statistics, as autovacuum gathers them. (A
            # table without any yet gets a bitmap scan of the same index, then a sort.)
            await read_store.query(f"ANALYZE {read_store.physical(Ledger.ledgers, 1)}")
            plan = " / ".join(
                str(row[0]) for row in await read_store.query(f"EXPLAIN {sql}", *params)
            )
            assert f"Index Scan using {index}" in plan or f"Index Only Scan using {index}" in plan
            assert "Seq Scan" not in plan and "Sort" not in plan, plan


async def test_a_malformed_page_cursor_is_a_validation_error(backend: Backend) -> None:
    async with backend.event_store() as store, backend.read_store() as read_store:
        await write_ledgers(store, 5, 0)
        await projected(backend, store, read_store)
        listing: dict[str, Any] = {"order_by": ("owner", "id")}
        good = await fetch_page(read_store, Ledger.ledgers, limit=2, **listing)
        assert good.next_cursor is not None
        one_value = base64.urlsafe_b64encode(b'["o-1"]').decode().rstrip("=")
        for cursor in ("%%% not a cursor", "bm90IGpzb24", one_value, good.next_cursor[:-3]):
            with pytest.raises(ValidationError):
                await fetch_page(read_store, Ledger.ledgers, limit=2, after=cursor, **listing)


# -- read store URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/read", "unsupported read store URL 'mysql://localhost/read'"),
        ("redis:///read.db", "unsupported read store URL"),
        ("sqlite://", "names no file"),
        ("postgresql://u@localhost/db?synchronous_commit=maybe", "synchronous_commit must be"),
    ],
)
def test_a_bad_read_store_url_is_refused_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_store_from_url(url)


def test_an_unknown_option_of_a_sqlite_read_store_url_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        read_store_from_url("sqlite:///read.db?bogus=1")


def test_a_good_read_store_url_names_its_database() -> None:
    store = read_store_from_url("sqlite:///some/read.db")
    assert isinstance(store, SQLiteReadStore) and store.path == "some/read.db"
    store = read_store_from_url("sqlite:////abs/read.db")
    assert isinstance(store, SQLiteReadStore) and store.path == "/abs/read.db"
    pg = read_store_from_url("postgresql://u@localhost:5432/db?schema=reads")
    assert isinstance(pg, PostgresReadStore) and pg.schema == "reads"
    assert pg.dsn == "postgresql://u@localhost:5432/db"
    assert not pg.synchronous_commit
    # obelisk's own options are taken out; the driver's (sslmode) stay in the DSN.
    pg = read_store_from_url("postgres://u@h/db?sslmode=disable&synchronous_commit=on&schema=r")
    assert isinstance(pg, PostgresReadStore) and (pg.schema, pg.synchronous_commit) == ("r", True)
    assert pg.dsn == "postgres://u@h/db?sslmode=disable"


# -- a wake-up before the commit is readable ------------------------------------------------


async def test_a_commit_held_back_by_an_older_transaction_is_applied_without_waiting_a_poll(
    postgres_dsn: str, pg_schema: str
) -> None:
    """On PostgreSQL a commit is readable only once older transactions on the server have
    ended, and its NOTIFY arrives before that. The runner must look again soon after a
    fruitless wake-up, not sleep a whole poll interval (here 30 s, far beyond the wait;
    the lease, renewed every third of it, is long enough not to cut the sleep short)."""
    import asyncpg

    backend = Backend("postgresql", Path("."), postgres_dsn, pg_schema)
    async with backend.event_store() as store, backend.read_store() as read_store:
        await write_ledgers(store, 1, 1)
        runner = ProjectionRunner(
            Ledger(), store, read_store, poll_interval=30.0, lease_seconds=90.0
        )
        async with running(runner) as task:
            await reach(runner, task, await store.last_position())
            older = await asyncpg.connect(postgres_dsn)
            try:
                holding = older.transaction()
                await holding.start()
                await older.fetchval("SELECT pg_current_xact_id()")  # an xid: holds xmin
                (result,) = await store.append_many(
                    [AppendRequest("held", [LedgerOpened(owner="x")], NO_STREAM)]
                )
                await asyncio.sleep(0.1)  # the runner is woken now and reads nothing yet
                assert runner.position < result.last_position
                await holding.commit()
            finally:
                await older.close()
            assert await runner.wait_for(result.last_position, timeout=WAIT / 2)
