"""Workloads of the loading issue: snapshots, cache hits, the cache against creates.

* ``W3-snapshot`` / ``W3-snapshot-behind``: W3's 10,000-event account, loaded through a
  snapshot at its head / 100 events behind it; raw: the snapshot row and the events after
  it, decoded by hand.
* ``cache-hit``: a unit of work getting an aggregate the cache holds (no I/O); raw: the
  read of that aggregate's rows that the hit saves.
* ``W2-cache``: W2 with the cache on, against W1 (creates) of the same run: with the
  cache an update should cost barely more than a create.
* ``W2-snapshots``: W2 with the cache on and a snapshot every 10 events; the figure is the
  p99 command latency, against the same run without snapshots.
* ``W2-fast-forward``: W2 with the cache in fast-forward mode (a short read per hit),
  against W2's raw baseline: what a multi-writer deployment pays.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, ClassVar

from obelisk.application import Application, SnapshotPolicy
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.workload import Target, Workload, fold_balances, open_accounts, scaled
from obelisk.bench.workloads import Create, Replay, Update
from obelisk.demo.bank import Account, Deposit
from obelisk.domain.state import state_codec
from obelisk.store.base import EventStore
from obelisk.store.records import Snapshot

__all__ = [
    "CacheHit",
    "CachedUpdate",
    "FastForwardUpdate",
    "SnapshotBehindReplay",
    "SnapshotReplay",
    "SnapshottingUpdate",
]

# Every Account loads through its snapshot; none is taken during the timed loads.
_READ_SNAPSHOTS = SnapshotPolicy(every=1_000_000)


class SnapshotReplay(Replay):
    """W3 through a snapshot at the head of the stream."""

    id = "W3-snapshot"
    name = "snapshot-replay"
    title = "app.get of the W3 aggregate through a snapshot at its head"
    baseline = "SELECT the snapshot row + msgspec decode, then the events after it"
    behind: ClassVar[int] = 0
    loads = 200
    targets: ClassVar[dict[str, float]] = {"sqlite": 0.2, "postgresql": 0.5}

    def target(self, backend: str) -> Target:
        limit = self.targets.get(backend)
        return Target(None, None if limit is None else limit * (2 if self.behind else 1))

    def application_options(self) -> dict[str, Any]:
        return {"cache_size": 0, "snapshots": _READ_SNAPSHOTS}

    @property
    def lag(self) -> int:
        """Events between the snapshot and the head (100 at full size)."""
        if not self.behind:
            return 0
        return min(scaled(self.behind, self.scale, 1), self.events - 1)

    async def seed(self, store: EventStore) -> None:
        await super().seed(store)
        version = self.events - self.lag
        events = await store.read_stream_events(self.stream_id, to_version=version)
        account = Account.rebuild(self.stream_id, events)
        await store.save_snapshots(
            [
                Snapshot(
                    self.stream_id, version, Account.aggregate_type, Account.state_version,
                    state_codec(Account).encode(account), time.time(),
                )
            ]
        )  # fmt: skip

    async def run_obelisk(self, app: Application) -> Sample:
        sample = await super().run_obelisk(app)
        stats = app.loading.stats[Account.aggregate_type]
        self._check(
            stats.snapshot_hits == stats.loads == self.loads,
            "obelisk", f"{stats.snapshot_hits} of {stats.loads} loads used the snapshot",
        )  # fmt: skip
        return sample

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        sample = await raw.load_from_snapshot(location, self.stream_id, self.loads)
        self._check(
            sample.result == (self._expected_balance(), self.events),
            "raw", f"balance and version {sample.result}",
        )  # fmt: skip
        return sample


class SnapshotBehindReplay(SnapshotReplay):
    """W3 through a snapshot 100 events behind the head."""

    id = "W3-snapshot-behind"
    name = "snapshot-behind"
    title = "app.get of the W3 aggregate through a snapshot 100 events behind its head"
    behind = 100


class CacheHit(Workload):
    """A unit of work getting an aggregate the cache holds."""

    id = "cache-hit"
    name = "cache-hit"
    title = "a unit of work's get of a cached aggregate (lock, hit, release)"
    baseline = "the SELECT + decode of that aggregate's rows, which the hit saves"
    unit = "us"
    higher_is_better = False
    target_ratio = None
    target_value = 5.0
    rounds: ClassVar[int] = 20

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.accounts = [f"hit-{i:05d}" for i in range(scaled(1000, scale, 10))]

    @property
    def n(self) -> int:
        return len(self.accounts) * self.rounds

    def value(self, sample: Sample) -> float:
        return sample.seconds * 1e6 / sample.work

    async def seed(self, store: EventStore) -> None:
        await open_accounts(store, self.accounts)

    async def run_obelisk(self, app: Application) -> Sample:
        for account_id in self.accounts:  # untimed: fill the cache
            await app.handle(Deposit(account_id=account_id, amount=1))
        reads = 0
        store = app.store
        real_read = store.read_stream_events

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await real_read(*args, **kwargs)

        store.read_stream_events = counted  # type: ignore[method-assign]
        unit_of_work = app.unit_of_work
        try:
            with stopwatch() as watch:
                for _ in range(self.rounds):
                    for account_id in self.accounts:
                        async with unit_of_work() as uow:
                            await uow.get(Account, account_id)
        finally:
            del store.read_stream_events
        self._check(reads == 0, "obelisk", f"{reads} store reads during cache hits")
        self._check(app.cache.hits >= self.n, "obelisk", f"only {app.cache.hits} cache hits")
        return Sample(watch.seconds, self.n)

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        loads = max(self.n // 10, 10)
        sample = await raw.load_stream(location, self.accounts[0], loads)
        self._check(isinstance(sample.result, list) and len(sample.result) == 1, "raw", "rows")
        return sample


class CachedUpdate(Update):
    """W2 with the aggregate cache on, against W1 of the same run."""

    id = "W2-cache"
    name = "cached-update"
    title = "Deposit commands with the aggregate cache on (every get a hit)"
    baseline = "obelisk's W1 (one create per command) in the same run"
    target_ratio = 0.9
    aggregate_cache = True

    def reference(self) -> Workload | None:
        return Create(self.scale)


class SnapshottingUpdate(Update):
    """W2 with the cache on and a snapshot every 10 events: p99 command latency."""

    id = "W2-snapshots"
    name = "snapshotting-update"
    title = "p99 latency of W2 commands (cache on) taking a snapshot every 10 events"
    baseline = "the same commands without snapshots, same run"
    unit = "ms"
    higher_is_better = False
    target_ratio = 1 / 1.1  # p99 within 10% of the run without snapshots
    aggregate_cache = True
    snapshot_every: ClassVar[int | None] = 10

    def application_options(self) -> dict[str, Any]:
        options = super().application_options()
        if self.snapshot_every is not None:
            options["snapshots"] = SnapshotPolicy(every=self.snapshot_every)
        return options

    def reference(self) -> Workload | None:
        return _PlainLatencyUpdate(self.scale) if self.snapshot_every is not None else None

    def value(self, sample: Sample) -> float:
        return sample.extra["p99_ms"]

    async def run_obelisk(self, app: Application) -> Sample:
        plan = self._plan()
        handle = app.handle
        clock = time.perf_counter
        latencies: list[float] = []
        with stopwatch() as watch:
            for account_id, amount in plan:
                started = clock()
                await handle(Deposit(account_id=account_id, amount=amount))
                latencies.append(clock() - started)
        await app.snapshotter.drain()
        balances_ok = await self._verify(app)
        self._check(balances_ok, "obelisk", "balances differ from the plan")
        if self.snapshot_every is not None:
            self._check(app.snapshotter.taken > 0, "obelisk", "no snapshot was taken")
        sample = Sample(watch.seconds, self.n)
        sample.extra["p99_ms"] = statistics.quantiles(latencies, n=100)[98] * 1000
        sample.extra["p50_ms"] = statistics.median(latencies) * 1000
        return sample

    async def _verify(self, app: Application) -> bool:
        balances, _ = await fold_balances(app.store, 1000)
        return balances == self._expected()


class _PlainLatencyUpdate(SnapshottingUpdate):
    """W2-snapshots' reference: the same commands and timing, no snapshots."""

    snapshot_every = None


class FastForwardUpdate(Update):
    """W2 with the cache in fast-forward mode: each hit reads the events it missed."""

    id = "W2-fast-forward"
    name = "fast-forward-update"
    title = "Deposit commands, cache in fast-forward mode (a short read per hit)"
    aggregate_cache = True

    def application_options(self) -> dict[str, Any]:
        return {**super().application_options(), "cache_mode": "fast-forward"}
