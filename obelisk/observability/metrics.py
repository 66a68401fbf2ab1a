"""Prometheus metrics for an Application, cheap enough to leave on.

Two kinds of numbers:

* **Counters the application keeps anyway** (cache hits, misses and evictions; loads,
  snapshot hits and ignored snapshots per aggregate type; snapshots taken; group-commit
  batches and appends) are read only when Prometheus scrapes: they cost the hot path
  nothing.
* **Histograms** (command duration by command type and outcome, the wait for the append,
  load time and events replayed by aggregate type) are kept in plain lists — a bisect and two
  additions per observation, no lock (the event loop is one thread) — and turned into
  Prometheus histograms at scrape time. prometheus_client's own Histogram takes a lock and
  a label lookup per observation: measured at about three times the cost.

**Labels are bounded.** They come only from class attributes (a command's wire name, an
aggregate's type), never from a command's fields, and each label accepts at most
``max_label_values`` distinct values; later ones are counted under ``"other"``. A user id
cannot become a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from obelisk.observability.histogram import EVENT_BUCKETS, LATENCY_BUCKETS, FastHistogram

if TYPE_CHECKING:
    from obelisk.application.app import Application
    from obelisk.messaging.relay import OutboxRelay
    from obelisk.messaging.worker import MessageWorker
    from obelisk.projections.runner import ProjectionRunner
    from obelisk.projections.worker import ProjectionWorker

__all__ = ["LATENCY_BUCKETS", "FastHistogram", "LabelGuard", "Metrics"]

OTHER: Final = "other"


class LabelGuard:
    """Admits at most ``limit`` distinct label values; the rest become ``"other"``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self.refused = 0

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        self.refused += 1
        return OTHER


class _Family:
    """Histograms of one metric by label values (each label guarded)."""

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...], bounds: Sequence[float], limit: int
    ) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.guards = [LabelGuard(limit) for _ in labels]
        self.children: dict[tuple[str, ...], FastHistogram] = {}  # by guarded values
        self._by_raw: dict[tuple[str, ...], FastHistogram] = {}

    def child(self, *values: str) -> FastHistogram:
        found = self._by_raw.get(values)
        if found is None:
            guarded = tuple(guard(v) for guard, v in zip(self.guards, values, strict=True))
            found = self.children.get(guarded)
            if found is None:
                found = self.children[guarded] = FastHistogram(self.bounds)
            if guarded == values:  # refused values are not remembered: no unbounded dict
                self._by_raw[values] = found
        return found

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for values, histogram in list(self.children.items()):
            family.add_metric(list(values), histogram.buckets(), histogram.sum)
        return family


class Metrics(Collector):
    """The metrics of one Application; give it to ``Application(metrics=...)``.

    Args:
        registry: where to register (a new ``CollectorRegistry`` by default, so two
            applications in one process never collide); pass
            ``prometheus_client.REGISTRY`` to share the process-wide one.
        max_label_values: distinct values each label admits before ``"other"``.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_label_values: int = 100
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        limit = max_label_values
        self.commands = _Family(
            "obelisk_command_seconds", "Command handling time by command type and outcome.",
            ("command", "outcome"), LATENCY_BUCKETS, limit,
        )  # fmt: skip
        self.loads = _Family(
            "obelisk_aggregate_load_seconds", "Aggregate load time by aggregate type.",
            ("aggregate_type",), LATENCY_BUCKETS, limit,
        )  # fmt: skip
        self.replayed = _Family(
            "obelisk_events_replayed", "Events replayed per aggregate load.",
            ("aggregate_type",), EVENT_BUCKETS, limit,
        )  # fmt: skip
        self._ok: dict[str, FastHistogram] = {}
        self._apps: list[Application] = []
        self._extra: list[Callable[[], Iterator[Any]]] = []
        self.registry.register(self)

    def command_ok(self, name: str) -> FastHistogram:
        """The histogram of successful ``name`` commands (the hot path: one dict lookup)."""
        found = self._ok.get(name)
        if found is None:
            found = self._ok[name] = self.commands.child(name, "ok")
        return found

    def attach(self, app: Application) -> None:
        """Also report ``app``'s own counters (cache, loads, snapshots, group commit)."""
        self._apps.append(app)

    def watch_projection(self, watched: ProjectionRunner | ProjectionWorker) -> None:
        """Also report a projection runner's (or a worker's runners') checkpoint, lag,
        batch time and dead letters."""
        from obelisk.observability.projection_metrics import projection_source

        self.add_source(projection_source(watched))

    def watch_relay(self, relay: OutboxRelay) -> None:
        """Also report an outbox relay: its checkpoint and lag (as a projection named
        ``relay:<name>``), what it published and the duplicates the broker dropped."""
        from obelisk.observability.messaging_metrics import relay_source

        self.watch_projection(relay)
        self.add_source(relay_source(relay))

    def watch_worker(self, worker: MessageWorker) -> None:
        """Also report a message worker: handled, retries, dead letters, duplicates,
        messages waiting and handler time, by group."""
        from obelisk.observability.messaging_metrics import worker_source

        self.add_source(worker_source(worker))

    def add_source(self, source: Callable[[], Iterator[Any]]) -> None:
        """Add a callable yielding metric families at scrape time (later capabilities)."""
        self._extra.append(source)

    def collect(self) -> Iterator[Any]:
        for family in (self.commands, self.loads, self.replayed):
            yield family.collect()
        for app in self._apps:
            yield from _application_counters(app)
        for source in self._extra:
            yield from source()

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected lazily: nothing to check at registration


def _application_counters(app: Application) -> Iterator[Any]:
    cache = app.cache
    for name, value, doc in (
        ("obelisk_cache_hits", cache.hits, "Aggregate cache hits."),
        ("obelisk_cache_misses", cache.misses, "Aggregate cache misses."),
        ("obelisk_cache_evictions", cache.evictions, "Aggregate cache evictions."),
        ("obelisk_snapshots_taken", app.snapshotter.taken, "Snapshots saved."),
        ("obelisk_snapshots_failed", app.snapshotter.failed, "Snapshots that could not be saved."),
    ):
        yield CounterMetricFamily(name, doc, value=value)
    size = GaugeMetricFamily("obelisk_cache_entries", "Aggregates in the cache.")
    size.add_metric([], len(cache))
    yield size
    hits = CounterMetricFamily(
        "obelisk_snapshot_hits", "Loads that started from a snapshot.", labels=["aggregate_type"]
    )
    ignored = CounterMetricFamily(
        "obelisk_snapshots_ignored", "Snapshots ignored (unusable).", labels=["aggregate_type"]
    )
    over = CounterMetricFamily(
        "obelisk_loads_over_budget", "Loads over their budget.", labels=["aggregate_type"]
    )
    for aggregate_type, stats in list(app.loading.stats.items())[:100]:
        hits.add_metric([aggregate_type], stats.snapshot_hits)
        ignored.add_metric([aggregate_type], stats.snapshots_ignored)
        over.add_metric([aggregate_type], stats.over_budget)
    yield from (hits, ignored, over)
    writer = getattr(app._store, "_writer", None) if app._store is not None else None
    if writer is not None and hasattr(writer, "batches"):
        yield CounterMetricFamily(
            "obelisk_append_batches", "Group-commit batches committed.", value=writer.batches
        )
        yield CounterMetricFamily(
            "obelisk_appends", "Appends committed in those batches.", value=writer.jobs
        )
        sizes: FastHistogram | None = getattr(writer, "batch_sizes", None)
        waits: FastHistogram | None = getattr(writer, "batch_seconds", None)
        for histogram, metric, doc in (
            (sizes, "obelisk_append_batch_size", "Appends per group-commit batch."),
            (waits, "obelisk_group_commit_seconds",
             "Time from a batch's start to its commit (what its appends waited)."),
        ):  # fmt: skip
            if histogram is not None:
                family = HistogramMetricFamily(metric, doc)
                family.add_metric([], histogram.buckets(), histogram.sum)
                yield family
