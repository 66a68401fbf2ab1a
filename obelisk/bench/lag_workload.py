"""The ``lag`` workload: how stale a live read model is while W6 writes.

W6's 64 client tasks send their commands while a ``ProjectionRunner.run()`` task in the
same process follows the log into a balances table (read store beside the events). For
every event applied, the lag is the wall-clock time at which its batch's transaction
committed minus the event's ``recorded_at``; the figure is the p99 in milliseconds.

The runner does not hand its batches' events to anyone, so the bench watches from outside
without touching obelisk.projections: the pages ``read_all`` returns to the runner are
kept in order, and each ``on_batch`` call (made just after a commit) settles every kept
event at or below the runner's new position.

The yardstick is W6 itself without the projection, in the same run: the p99 latency of its
commands, i.e. how long a client waits for its write. ``ratio_to_raw`` is that over the
lag: at 1 or more, a client that reads right after its command returns mostly sees its
write. The commands' own rate and p99 with the projection running are in ``extra``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from obelisk.application import Application
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.projection_models import Balances, read_balances
from obelisk.bench.sites import Site
from obelisk.bench.workload import Target, Workload, fold_balances
from obelisk.bench.workloads import Concurrent
from obelisk.demo.bank import Deposit, OpenAccount
from obelisk.projections import ProjectionRunner
from obelisk.store.records import StoredEvent

__all__ = ["ProjectionLag"]

Plan = list[tuple[bool, str, int]]
ReadAll = Callable[..., Awaitable[list[StoredEvent]]]


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


class LagWatch:
    """Commit-to-read-model delays of every event a runner applies (see the module notes)."""

    def __init__(self) -> None:
        self._pages: deque[list[StoredEvent]] = deque()
        self.lags: list[float] = []

    def wrap(self, read_all: ReadAll) -> ReadAll:
        """``read_all`` keeping each non-empty page for :meth:`committed`."""

        async def watched(
            *,
            after: int = 0,
            limit: int = 1000,
            types: Iterable[str] | None = None,
            keep_undecodable: bool = False,
        ) -> list[StoredEvent]:
            page = await read_all(
                after=after, limit=limit, types=types, keep_undecodable=keep_undecodable
            )
            if page:
                self._pages.append(page)
            return page

        return watched

    def committed(self, runner: ProjectionRunner) -> None:
        """The runner's ``on_batch``: events up to its position are in the read model now."""
        now = time.time()
        pages, lags, position = self._pages, self.lags, runner.position
        # Pages are read, and committed, in position order; a prefetched page stays until
        # a later batch commits it.
        while pages and pages[0][-1].position <= position:
            lags.extend(now - stored.recorded_at for stored in pages.popleft())


async def _drive(app: Application, plans: list[Plan]) -> tuple[float, list[float], int]:
    """W6's clients; the wall time, every command's latency in seconds, and the highest
    position a command returned (what a reader must wait for to see every write)."""
    handle = app.handle
    clock = time.perf_counter
    latencies: list[float] = []
    last = 0

    async def client(plan: Plan) -> None:
        nonlocal last
        for is_open, account_id, amount in plan:
            started = clock()
            if is_open:
                position = await handle(OpenAccount(account_id=account_id, owner="w6"))
            else:
                position = await handle(Deposit(account_id=account_id, amount=amount))
            latencies.append(clock() - started)
            if position is not None and position > last:
                last = position

    with stopwatch() as watch:
        async with asyncio.TaskGroup() as group:
            for plan in plans:
                group.create_task(client(plan))
    return watch.seconds, latencies, last


def _expected(plans: list[Plan]) -> dict[str, int]:
    expected: dict[str, int] = {}
    for plan in plans:
        for is_open, account_id, amount in plan:
            expected[account_id] = 0 if is_open else expected[account_id] + amount
    return expected


class _CommandLatency(Concurrent):
    """W6 timing every command: the p99 is ``lag``'s yardstick."""

    def value(self, sample: Sample) -> float:
        return sample.extra["command_p99_ms"]

    async def run_obelisk(self, app: Application) -> Sample:
        plans = self._plans()
        seconds, latencies, _ = await _drive(app, plans)
        await self._verify_log(app, plans)
        sample = Sample(seconds, self.total)
        sample.extra["command_p99_ms"] = _p99(latencies) * 1000
        sample.extra["commands_per_s"] = self.total / seconds
        return sample

    async def _verify_log(self, app: Application, plans: list[Plan]) -> None:
        balances, read = await fold_balances(app.store, 1000)
        self._check(read == self.total, "obelisk", f"{read} events stored, not {self.total}")
        self._check(balances == _expected(plans), "obelisk", "balances differ from the commands")


class ProjectionLag(_CommandLatency):
    """lag: p99 commit-to-read-model delay of a live projection following W6."""

    id = "lag"
    name = "projection-lag"
    title = (
        "p99 of (batch commit time - event recorded_at) for a ProjectionRunner.run() task "
        "following W6 live in the same process (balances table, read store beside the events)"
    )
    baseline = "plain W6 (no projection) in the same run: the p99 latency of its commands"
    unit = "ms"
    higher_is_better = False
    target_value = 100.0

    def target(self, backend: str) -> Target:
        # An absolute limit only, on every backend (not W6's ratio or command rate).
        return Target(None, self.target_value)

    def reference(self) -> Workload | None:
        return _CommandLatency(self.scale)

    def value(self, sample: Sample) -> float:
        return sample.extra["lag_p99_ms"]

    async def run_obelisk(self, app: Application) -> Sample:
        store = app.store
        site = Site.of_store(store).beside("read")
        plans = self._plans()
        watch = LagWatch()
        try:
            async with site.read_store() as read_store:
                await read_store.register(Balances.name, Balances.version, 1, Balances.tables)
                runner = ProjectionRunner(Balances(), store, read_store)
                runner.on_batch = watch.committed
                store.read_all = watch.wrap(store.read_all)  # type: ignore[method-assign,assignment]
                following = asyncio.create_task(runner.run())
                try:
                    await self._until(lambda: runner.caught_up, following)
                    seconds, latencies, last = await _drive(app, plans)
                    # Not store.last_position(): on PostgreSQL it stays below commits
                    # while any older transaction on the server is still open, and
                    # stopping there would leave the last events unapplied.
                    await self._until(lambda: runner.position >= last, following)
                finally:
                    runner.stop()
                    await following
                    del store.read_all  # the class's method again
                balances = await read_balances(read_store, Balances.balances)
        finally:
            await site.discard()
        self._check(balances == _expected(plans), "obelisk", "projected balances differ")
        self._check(len(watch.lags) == self.total, "obelisk", f"{len(watch.lags)} lags measured")
        await self._verify_log(app, plans)
        return self._sample(seconds, latencies, watch.lags, runner)

    async def _until(self, done: Callable[[], bool], following: asyncio.Task[None]) -> None:
        """Wait (60 s at most) for ``done``; a runner that died is an error here."""
        deadline = time.monotonic() + 60
        while not done():
            if following.done():
                following.result()  # raises what stopped it
                self._check(False, "obelisk", "the runner stopped early")
            self._check(time.monotonic() < deadline, "obelisk", "the runner fell behind")
            await asyncio.sleep(0.002)

    def _sample(
        self, seconds: float, latencies: list[float], lags: list[float], runner: ProjectionRunner
    ) -> Sample:
        sample = Sample(seconds, self.total)
        extra = sample.extra
        extra["lag_p99_ms"] = _p99(lags) * 1000
        extra["lag_p50_ms"] = statistics.median(lags) * 1000
        extra["lag_max_ms"] = max(lags) * 1000
        extra["command_p99_ms"] = _p99(latencies) * 1000
        extra["commands_per_s"] = self.total / seconds
        extra["projection_batches"] = float(runner.batches)
        return sample
