"""The ``bulk`` workload: loading many streams at once through the store's COPY import.

PostgreSQL only: ``PostgresEventStore.import_events`` is the one bulk path obelisk has
(migrations from other stores, test data). Its raw baseline is the driver's COPY of the
same rows into the same table, with nothing checked and no stream heads kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import BenchError, Sample, stopwatch
from obelisk.bench.workload import STREAM_TYPE, Workload, amount, fold_balances, scaled
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.domain.events import Event
from obelisk.store.records import NO_STREAM, AppendRequest

__all__ = ["BulkImport"]


class BulkImport(Workload):
    """bulk: ``store.import_events`` of 20,000 streams x 10 events, one append per stream."""

    id = "bulk"
    name = "import"
    title = "store.import_events: 20,000 streams x 10 events, one append of 10 per stream"
    baseline = "copy_records_to_table of the same rows into the same table"
    unit = "events/s"
    target_ratio = 0.5
    target_value = 150_000.0
    backends = frozenset({"postgresql"})
    events_per_stream: ClassVar[int] = 10

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.streams = [f"bulk-{i:06d}" for i in range(scaled(20_000, scale, 10))]

    @property
    def n(self) -> int:
        return len(self.streams) * self.events_per_stream

    def _plan(self) -> list[tuple[str, list[Event]]]:
        """Per stream: an opening, then deposits; built before the clock, shared by both sides."""
        plan: list[tuple[str, list[Event]]] = []
        for i, stream_id in enumerate(self.streams):
            events: list[Event] = [AccountOpened(owner=f"owner-{i}")]
            events.extend(
                MoneyDeposited(amount=amount(i + k)) for k in range(1, self.events_per_stream)
            )
            plan.append((stream_id, events))
        return plan

    def _expected(self) -> dict[str, int]:
        return {
            stream_id: sum(amount(i + k) for k in range(1, self.events_per_stream))
            for i, stream_id in enumerate(self.streams)
        }

    async def run_obelisk(self, app: Application) -> Sample:
        store = app.store
        import_events = getattr(store, "import_events", None)
        if import_events is None:
            raise BenchError(f"{type(store).__name__} has no import_events (bulk needs one)")
        plan = self._plan()

        def requests() -> Iterator[AppendRequest]:
            # Requests are made as the import consumes them, as a migration streaming
            # from another store would: building them is part of the timed work.
            for stream_id, events in plan:
                yield AppendRequest(stream_id, events, NO_STREAM, STREAM_TYPE)

        with stopwatch() as watch:
            result = await import_events(requests())
        self._check(result.events == self.n, "obelisk", f"{result.events} events imported")
        self._check(result.appends == len(self.streams), "obelisk", "wrong number of appends")
        self._check(
            result.last_position == await store.last_position(),
            "obelisk",
            "the import's last position is not the store's",
        )
        balances, read = await fold_balances(store, 10_000)
        self._check(read == self.n, "obelisk", f"{read} events stored, not {self.n}")
        self._check(balances == self._expected(), "obelisk", "balances differ from the plan")
        for stream_id in (self.streams[0], self.streams[-1]):
            version = await store.stream_version(stream_id)
            self._check(
                version == self.events_per_stream, "obelisk", f"{stream_id} at version {version}"
            )
        return Sample(watch.seconds, self.n)

    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        sample = await raw.copy_events(location, self._plan())
        self._check(
            sample.result == (self.n, len(self.streams)),
            "raw",
            f"(rows, streams) = {sample.result}, expected {(self.n, len(self.streams))}",
        )
        return sample
