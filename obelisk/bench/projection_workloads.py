"""Projection workloads over W4's log: catching a read model up, alone and partitioned.

* ``W4b``: ``ProjectionRunner.run_until_caught_up`` of W4's 11,000 events into a balances
  table, with sync handlers (staged, merged per key, written set-based), pages of 1,000;
  raw: the same pages folded and upserted by hand, one transaction per page.
* ``W4b-partitioned`` (PostgreSQL): a projection whose async handlers run SQL per event,
  applied by 4 runners of a 4-partition projection in 4 processes, against the same
  projection applied by one runner in one process (its ``raw_*`` figures).

Read models go beside the run's event database (:mod:`obelisk.bench.sites`); both sides
register or create their tables before the clock starts, as a deployed projection has
them already, and every run is checked against the balances W4's plan implies.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.child import run_children
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.projection_models import Ledger, numbered_balances, read_balances
from obelisk.bench.sites import Site
from obelisk.bench.workload import Target, Workload
from obelisk.bench.workloads import CatchUp
from obelisk.projections import Projection, ProjectionRunner, ReadStore

__all__ = ["PartitionedProjection", "ProjectionCatchUp"]


async def _register(read_store: ReadStore, projection: type[Projection], parts: int) -> None:
    # What a deployed projection already has: its tables and checkpoints (untimed).
    await read_store.register(projection.name, projection.version, parts, projection.tables)


class ProjectionCatchUp(CatchUp):
    """W4b: a projection with sync handlers catches up on W4's log, three times."""

    id = "W4b"
    name = "projection-catch-up"
    title = (
        "ProjectionRunner.run_until_caught_up of W4's log into a balances table (sync "
        "handlers, pages of 1,000; read store in a second SQLite file / a second schema); "
        "3 passes into fresh tables"
    )
    baseline = (
        "paged SELECT + decode + fold per page, then one transaction per page: executemany "
        "(SQLite) / unnest (PostgreSQL) upsert + checkpoint UPDATE, same durability"
    )
    target_ratio = 0.5
    targets: ClassVar[dict[str, float]] = {"sqlite": 150_000.0, "postgresql": 100_000.0}

    def target(self, backend: str) -> Target:
        return Target(self.target_ratio, self.targets.get(backend))

    async def run_obelisk(self, app: Application) -> Sample:
        store = app.store
        site = Site.of_store(store).beside("read")
        projections = [numbered_balances(number) for number in range(self.passes)]
        try:
            async with site.read_store() as read_store:
                for projection in projections:
                    await _register(read_store, type(projection), 1)
                runners = [
                    ProjectionRunner(p, store, read_store, page_size=self.page) for p in projections
                ]
                with stopwatch() as watch:
                    for runner in runners:
                        await runner.run_until_caught_up()
                head = await store.last_position()
                for runner in runners:
                    self._check(runner.position == head, "obelisk", f"{runner!r} not at {head}")
                applied = sum(runner.events_applied for runner in runners)
                self._check(applied == self.n * self.passes, "obelisk", f"{applied} applied")
                for projection in projections:
                    balances = await read_balances(read_store, projection.balances)
                    self._check(
                        balances == self._expected(), "obelisk", "projected balances differ"
                    )
        finally:
            await site.discard()
        return Sample(watch.seconds, applied)

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        sample = await raw.project_balances(location, self.page, self.passes)
        self._check(sample.work == self.n * self.passes, "raw", f"{sample.work} applied")
        self._check(sample.result == self._expected(), "raw", "projected balances differ")
        return sample


class PartitionedProjection(CatchUp):
    """W4b-partitioned: 4 worker processes share a projection that runs SQL per event."""

    id = "W4b-partitioned"
    name = "partitioned-projection"
    title = (
        "W4's log through a projection running 2 SQL statements per deposit (async "
        "handlers): 4 ProjectionRunners of 4 partitions, one per OS process"
    )
    baseline = "the same projection, 1 runner (1 partition) in 1 process, same run"
    target_ratio = 2.5
    backends = frozenset({"postgresql"})
    passes = 1
    workers: ClassVar[int] = 4

    def reference(self) -> Workload | None:
        return _OneWorker(self.scale)

    async def run_obelisk(self, app: Application) -> Sample:
        store = app.store
        events = Site.of_store(store)
        site = events.beside("read")
        try:
            async with site.read_store() as read_store:
                await _register(read_store, Ledger, self.workers)
                jobs = [
                    {
                        "job": "partition",
                        "projection": "ledger",
                        "event_store": events.event_store_url(),
                        "read_store": site.read_store_url(),
                        "partition": partition,
                        "partitions": self.workers,
                        "page_size": self.page,
                    }
                    for partition in range(self.workers)
                ]
                seconds, results = await run_children(jobs)
                await self._verify(await store.last_position(), read_store, results)
        finally:
            await site.discard()
        sample = Sample(seconds, self.n)
        # Where the time went, for reading a ratio: the workers' own CPU (the database
        # server's is not counted), and how many CPUs they and the server shared.
        sample.extra["workers"] = float(self.workers)
        sample.extra["worker_cpu_s"] = sum(float(r["cpu_seconds"]) for r in results)
        sample.extra["projection_batches"] = float(sum(int(r["batches"]) for r in results))
        sample.extra["cpus"] = float(os.cpu_count() or 0)
        return sample

    async def _verify(
        self, head: int, read_store: ReadStore, results: list[dict[str, Any]]
    ) -> None:
        applied = sum(int(r["events"]) for r in results)
        self._check(applied == self.n, "obelisk", f"{applied} events applied, not {self.n}")
        positions = {int(r["position"]) for r in results}
        self._check(positions == {head}, "obelisk", f"partitions stopped at {positions}")
        balances = await read_balances(read_store, Ledger.accounts)
        self._check(balances == self._expected(), "obelisk", "projected balances differ")
        (ledger,) = await read_store.query(
            f"SELECT count(*) FROM {read_store.qualified(Ledger.ledger.name)}"
        )
        deposits = len(self.accounts) * self.deposits_per_account
        self._check(ledger[0] == deposits, "obelisk", f"{ledger[0]} ledger rows")

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:  # pragma: no cover
        raise AssertionError("W4b-partitioned is measured against its reference run")


class _OneWorker(PartitionedProjection):
    """W4b-partitioned's yardstick: the same projection, one runner, one process."""

    workers = 1

    def reference(self) -> Workload | None:
        return None
