"""Projections under real faults: SIGKILL mid-batch, a PostgreSQL restart, killed workers.

The worker processes run ``_projection_worker.py``; its handlers are slow on purpose so that
a kill lands while a batch is applied but not committed. After every fault the read model
must still be the fold of the log with each event applied exactly once (``times`` = 1 in
the ``applied`` table, increments in ``ledgers``), and a from-scratch rebuild must agree.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obelisk.errors import StoreError
from obelisk.projections import ProjectionRunner, partition_of, rebuild, wait_for_position
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.servers.postgres import ThrowawayPostgres
from obelisk.store import AppendRequest
from obelisk.store.base import EventStore
from obelisk.store.postgres import PostgresEventStore

from ._projection_helpers import (
    NAME,
    WAIT,
    Backend,
    applied_rows,
    assert_exactly_once,
    ledger_rows,
    open_backend,
    reach,
    until,
    visible,
    write_ledgers,
)
from ._projection_worker import Ledger, LedgerCredited

_WORKER = Path(__file__).with_name("_projection_worker.py")
RECOVERY = 60.0  # bound on waiting for PostgreSQL to serve again after a restart


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]) -> Backend:
    return open_backend(request, tmp_path)


class WorkerProcess:
    """A ``_projection_worker.py`` child and the lines it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[str] = []
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, backend: Backend, log: Path, *args: str) -> WorkerProcess:
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(_WORKER),
                *backend.worker_args(),
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(proc, log)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            if line.endswith(b"\n"):  # a line cut short by the kill says nothing
                self.lines.append(line.decode().strip())

    def count(self, kind: str) -> int:
        return sum(1 for line in self.lines if line[0] == kind)

    @property
    def in_flight(self) -> bool:
        """Whether the last line was an applied event after the last commit."""
        return bool(self.lines) and self.lines[-1][0] == "a"

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        def done() -> bool:
            if self.proc.returncode is not None:
                tail = self.log.read_text()[-3000:]
                pytest.fail(f"the worker exited ({self.proc.returncode}) before {what}:\n{tail}")
            return condition()

        await until(done, what)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), WAIT) == -signal.SIGKILL
        await asyncio.wait_for(self._reading, WAIT)  # the lines already in the pipe


@pytest.fixture
async def processes() -> AsyncIterator[list[WorkerProcess]]:
    """Worker processes a test starts: none outlives it."""
    started: list[WorkerProcess] = []
    yield started
    for child in started:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()
        child._reading.cancel()


async def credit(store: EventStore, ids: list[str], amount: int) -> int:
    results = await store.append_many(
        [AppendRequest(sid, [LedgerCredited(amount=amount)]) for sid in ids]
    )
    return await visible(store, results[-1].last_position)


async def assert_a_rebuild_agrees(store: EventStore, backend: Backend) -> None:
    """Rebuild from scratch into a new generation: the same read model as the live one."""

    class Rebuilt(Ledger):
        version = 2

    async with backend.read_store() as read_store:
        live = await ledger_rows(read_store)
        assert await asyncio.wait_for(rebuild(Rebuilt(), store, read_store), WAIT) == 2
        assert await ledger_rows(read_store) == live
        await assert_exactly_once(store, read_store)


# -- SIGKILL mid-batch -------------------------------------------------------------------------


async def test_a_runner_killed_mid_batch_again_and_again_applies_every_event_exactly_once(
    backend: Backend, tmp_path: Path, processes: list[WorkerProcess]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "worker.log"
    killed_in_flight = 0
    async with backend.event_store() as store:
        await write_ledgers(store, 20, 15)
        # A restart under the same id takes the lease back at once; under another id it
        # waits for the dead one's lease to run out.
        for round_, worker_id in enumerate(["w-a", "w-a", "w-b", "w-b"]):
            child = await WorkerProcess.start(
                backend, log, "--worker-id", worker_id, "--delay", "0.003",
                "--page-size", "25", "--lease", "1.0",
            )  # fmt: skip
            processes.append(child)
            if round_ == 0:  # in the very first batch
                await child.until(lambda c=child: c.count("a") >= 3, "it applied an event")
            else:  # at a random moment after a few commits
                await child.until(lambda c=child: c.count("c") >= 2, "it committed batches")
                await asyncio.sleep(rng.uniform(0.0, 0.25))
            await child.kill()
            killed_in_flight += child.in_flight
            # The log grows between the crashes: old streams and new ones.
            await credit(store, [f"l-{i}" for i in range(0, 20, 3)], 100 + round_)
            await write_ledgers(store, 2, 2, prefix=f"r{round_}")

        # The last restart runs to the head in this process.
        async with backend.read_store() as read_store:
            runner = ProjectionRunner(Ledger(), store, read_store, owner="w-b")
            await asyncio.wait_for(runner.run_until_caught_up(), WAIT)
            await assert_exactly_once(store, read_store)
        await assert_a_rebuild_agrees(store, backend)
    assert killed_in_flight >= 1, f"no kill landed while a batch was in flight (seed {seed})"


# -- partitioned worker processes -----------------------------------------------------------------


async def test_a_killed_worker_process_partitions_are_taken_over_and_applied_exactly_once(
    backend: Backend, tmp_path: Path, processes: list[WorkerProcess]
) -> None:
    partitions = 4
    ids = [f"l-{i}" for i in range(24)]
    async with backend.event_store() as store, backend.read_store() as monitor:
        await write_ledgers(store, len(ids), 4)
        stop = asyncio.Event()

        async def keep_writing() -> None:
            # New credits all along, so both workers are busy whenever the kill comes.
            amount = 0
            while not stop.is_set():
                amount += 1
                await credit(store, ids, amount)
                await asyncio.sleep(0.02)

        writer = asyncio.create_task(keep_writing())
        children = []
        for worker_id in ("p1", "p2"):
            child = await WorkerProcess.start(
                backend, tmp_path / f"{worker_id}.log", "--mode", "worker",
                "--partitions", str(partitions), "--worker-id", worker_id,
                "--delay", "0.002", "--page-size", "10", "--lease", "1.0",
            )  # fmt: skip
            processes.append(child)
            children.append(child)
        first, second = children
        try:
            # Both own partitions and work, then the first dies mid-flight.
            async def both_own() -> bool:
                owners = {c.owner for c in await monitor.checkpoints(NAME)}
                return owners == {"p1", "p2"}

            await first.until(lambda: first.count("a") > 0, "the first worker applies events")
            await until(both_own, "each worker owns partitions")
            lost = {c.partition for c in await monitor.checkpoints(NAME) if c.owner == "p1"}
            seen = first.count("a")
            await first.until(lambda: first.count("a") > seen, "it applies more events")
            await first.kill()
            before = await store.last_position()
            await credit(store, ids, 1000)  # after the kill, in every partition
        finally:
            stop.set()
            await asyncio.wait_for(writer, WAIT)
        head = await visible(store, await store.last_position())

        # The survivor took the dead worker's partitions over once their leases expired.
        assert await wait_for_position(monitor, NAME, head, timeout=WAIT)
        assert {c.owner for c in await monitor.checkpoints(NAME)} == {"p2"}
        await second.kill()

        await assert_exactly_once(store, monitor)
        # Everything written after the kill was applied by the survivor, in every partition.
        late = [r for r in await applied_rows(monitor) if r[2] > before]
        assert len(late) >= len(ids) and {r[3] for r in late} == {"p2"}
        assert {partition_of(r[0], partitions) for r in late} >= lost
    await assert_a_rebuild_agrees_after(backend)


async def assert_a_rebuild_agrees_after(backend: Backend) -> None:
    async with backend.event_store() as store:
        await assert_a_rebuild_agrees(store, backend)


# -- a PostgreSQL restart ------------------------------------------------------------------------


async def test_a_projection_resumes_by_itself_after_a_postgres_restart(
    postgres_server: ThrowawayPostgres | None,
    postgres_dsn: str,
    pg_schema: str,
    loop_errors: list[object],
) -> None:
    if postgres_server is None:
        pytest.skip("restarts the server: needs the session's own, not $OBELISK_TEST_POSTGRES_DSN")
    server = postgres_server
    store = PostgresEventStore(postgres_dsn, schema=pg_schema, pool_min_size=1, connect_timeout=2)
    read_store = PostgresReadStore(postgres_dsn, schema=pg_schema)
    async with store, read_store:
        # A backlog and slow handlers: the restart lands while the runner is at work.
        head = await write_ledgers(store, 10, 20)
        runner = ProjectionRunner(
            Ledger(delay=0.003), store, read_store, page_size=20, poll_interval=0.1
        )
        task = asyncio.create_task(runner.run())
        stop = asyncio.Event()
        failed_appends = acked_after = 0
        restarted = False

        async def write() -> None:
            # Credits all along; a failed append may or may not have committed, which is
            # fine: the fold is taken from the log at the end.
            nonlocal acked_after, failed_appends
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    await store.append(f"l-{n % 10}", [LedgerCredited(amount=n)])
                except StoreError:
                    failed_appends += 1
                    await asyncio.sleep(0.05)
                    continue
                acked_after += restarted
                await asyncio.sleep(0.005)

        writer = asyncio.create_task(write())
        try:
            await until(lambda: runner.batches >= 1 or task.done(), "the runner is at work")
            assert runner.position < head
            await asyncio.to_thread(server.restart)
            restarted = True
            await asyncio.wait_for(until_acked(lambda: acked_after >= 20), RECOVERY)
        finally:
            stop.set()
            await asyncio.wait_for(writer, RECOVERY)
        try:
            last = await visible(store, await store.last_position())
            await reach(runner, task, last)  # it resumed by itself: no restart, no reopen
            await assert_exactly_once(store, read_store)
            # The restart hit both: they failed, then recovered by themselves.
            assert failed_appends > 0
            assert runner.errors > 0
        finally:
            runner.stop()
            await asyncio.wait_for(task, WAIT)


async def until_acked(condition: Callable[[], bool]) -> None:
    # Polling a counter of the writer above, which sets no event.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
