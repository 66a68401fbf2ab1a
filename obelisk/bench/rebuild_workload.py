"""The ``rebuild`` workload: a blue/green rebuild of a million events, and its memory.

``obelisk.projections.rebuild`` of a log of 100,000 accounts x 10 events (1,000,000 at full
size) into one balances table, in pages of 5,000. Each rebuild runs in a fresh process
(:mod:`obelisk.bench.child`), which reports its peak RSS (``VmHWM``; ``ru_maxrss`` where
there is no /proc): the whole process's high-water mark, C allocations included (SQLite's
page cache, asyncpg's buffers), at no cost to the timing — ``tracemalloc`` would see only
Python objects, and made this rebuild about five times slower when tried. The same
rebuild of a tenth of the events, in another fresh process, gives the second peak: a
rebuild whose memory is bounded by its page has about the same peak at both sizes.

On SQLite the event store memory-maps its file for reads (up to 256 MiB), and mapped
pages count in RSS: a million events map about 140 MB of file. The file-backed part is
reported beside each peak, and the peak without it, so that the file is not taken for the
rebuild's own memory.

The raw baseline does the same work by hand: pages of 5,000 read, decoded and folded, one
batched upsert and a checkpoint update per page, into a fresh table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.child import run_children
from obelisk.bench.measure import Sample
from obelisk.bench.projection_models import Balances, read_balances
from obelisk.bench.sites import Site
from obelisk.bench.workload import STREAM_TYPE, Workload, amount, scaled
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.domain.events import Event
from obelisk.store.base import EventStore
from obelisk.store.records import NO_STREAM, AppendRequest

__all__ = ["ProjectionRebuild", "bulk_seed"]

_SEED_CHUNK = 50_000  # events per append where the store has no bulk import
_KIB_PER_MB = 1024.0


async def bulk_seed(store: EventStore, requests: Iterator[AppendRequest]) -> None:
    """Write ``requests`` fast: PostgreSQL's COPY import, else large multi-stream appends."""
    import_events = getattr(store, "import_events", None)
    if import_events is not None:
        await import_events(requests)
        return
    chunk: list[AppendRequest] = []
    size = 0
    for request in requests:
        chunk.append(request)
        size += len(request.events)
        if size >= _SEED_CHUNK:
            await store.append_many(chunk)
            chunk, size = [], 0
    if chunk:
        await store.append_many(chunk)


class ProjectionRebuild(Workload):
    """rebuild: 1,000,000 events rebuilt into a balances table; peak RSS at two sizes."""

    id = "rebuild"
    name = "rebuild"
    title = (
        "obelisk.projections.rebuild of 100,000 accounts x 10 events into one balances "
        "table, pages of 5,000, in a fresh process (read store beside the events); peak "
        "RSS of that process and of the same rebuild of a tenth of the log in extra"
    )
    baseline = (
        "pages of 5,000: SELECT + decode + fold, then a batched upsert into a fresh table "
        "+ checkpoint UPDATE, one transaction per page"
    )
    unit = "events/s"
    target_ratio = 0.5
    events_per_account: ClassVar[int] = 10
    page: ClassVar[int] = 5000

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.accounts = scaled(100_000, scale, 100)
        self.small_accounts = max(10, self.accounts // 10)

    @property
    def n(self) -> int:
        return self.accounts * self.events_per_account

    def _requests(self, accounts: int) -> Iterator[AppendRequest]:
        for i in range(accounts):
            events: list[Event] = [AccountOpened(owner=f"owner-{i}")]
            events.extend(
                MoneyDeposited(amount=amount(i + k)) for k in range(1, self.events_per_account)
            )
            yield AppendRequest(f"rb-{i:07d}", events, NO_STREAM, STREAM_TYPE)

    def _expected(self, accounts: int) -> dict[str, int]:
        return {
            f"rb-{i:07d}": sum(amount(i + k) for k in range(1, self.events_per_account))
            for i in range(accounts)
        }

    async def seed(self, store: EventStore) -> None:
        await bulk_seed(store, self._requests(self.accounts))

    def _job(self, events: Site, read: Site) -> dict[str, Any]:
        return {
            "job": "rebuild", "projection": "balances", "page_size": self.page,
            "event_store": events.event_store_url(), "read_store": read.read_store_url(),
        }  # fmt: skip

    async def run_obelisk(self, app: Application) -> Sample:
        events = Site.of_store(app.store)
        read = events.beside("read")
        small = events.beside("small")
        small_read = events.beside("small_read")
        try:
            seconds, (large,) = await run_children([self._job(events, read)])
            await self._verify(read, large, self.accounts)
            # The tenth-size log, seeded untimed, rebuilt in a process of its own.
            async with small.event_store() as store:
                await bulk_seed(store, self._requests(self.small_accounts))
            _, (little,) = await run_children([self._job(small, small_read)])
            await self._verify(small_read, little, self.small_accounts)
        finally:
            for site in (read, small, small_read):
                await site.discard()
        sample = Sample(seconds, self.n)
        sample.extra.update(_memory_extra(little, large))
        return sample

    async def _verify(self, read: Site, result: dict[str, Any], accounts: int) -> None:
        events = accounts * self.events_per_account
        self._check(result["events"] == events, "obelisk", f"{result['events']} rebuilt")
        async with read.read_store() as read_store:
            state = await read_store.state(Balances.name)
            self._check(
                state is not None
                and state.live_generation == result["generation"]
                and state.building_generation is None,
                "obelisk", f"the rebuilt generation is not live: {state}",
            )  # fmt: skip
            balances = await read_balances(read_store, Balances.balances)
        self._check(balances == self._expected(accounts), "obelisk", "rebuilt balances differ")

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        sample = await raw.project_balances(location, self.page)
        self._check(sample.work == self.n, "raw", f"{sample.work} events applied")
        self._check(
            sample.result == self._expected(self.accounts), "raw", "projected balances differ"
        )
        return sample


def _memory_extra(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    """The two rebuilds' peak RSS (MB) and their ratio, and the sizes they are for.

    Where the file-backed part of RSS is known (Linux), it is given too, and the peak
    without it (``own_rss``): the process's own memory, the part a leak would grow. It is
    exact when the peak is reached at the end, as it is when mapped pages only add up.
    """
    extra = {
        "small_events": float(small["events"]),
        "large_events": float(large["events"]),
        "peak_rss_mb_small": small["peak_rss_kib"] / _KIB_PER_MB,
        "peak_rss_mb_large": large["peak_rss_kib"] / _KIB_PER_MB,
        "peak_rss_ratio": large["peak_rss_kib"] / small["peak_rss_kib"],
    }
    if "file_rss_kib" in small and "file_rss_kib" in large:
        own_small = small["peak_rss_kib"] - small["file_rss_kib"]
        own_large = large["peak_rss_kib"] - large["file_rss_kib"]
        extra["file_rss_mb_small"] = small["file_rss_kib"] / _KIB_PER_MB
        extra["file_rss_mb_large"] = large["file_rss_kib"] / _KIB_PER_MB
        extra["own_rss_mb_small"] = own_small / _KIB_PER_MB
        extra["own_rss_mb_large"] = own_large / _KIB_PER_MB
        extra["own_rss_ratio"] = own_large / own_small
    return extra
