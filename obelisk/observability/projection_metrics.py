"""Projection metrics: checkpoint, lag, batch time and dead letters per projection partition.

Read from the runners at scrape time (the runners keep the numbers anyway), so watching a
projection costs its batches nothing. Labels are the projection's class-level name and the
partition number: both bounded by the code, never by the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from obelisk.projections.runner import ProjectionRunner
    from obelisk.projections.worker import ProjectionWorker

__all__ = ["projection_source"]

_LABELS = ["projection", "partition"]


def projection_source(
    watched: ProjectionRunner | ProjectionWorker,
) -> Callable[[], Iterator[Any]]:
    """A metrics source (for ``Metrics.add_source``) reporting ``watched``'s runners."""

    def runners() -> list[ProjectionRunner]:
        found = getattr(watched, "runners", None)
        if isinstance(found, dict):
            return list(found.values())
        return [watched]  # type: ignore[list-item]

    def collect() -> Iterator[Any]:
        position = GaugeMetricFamily(
            "obelisk_projection_position", "Position applied and committed.", labels=_LABELS
        )
        behind = GaugeMetricFamily(
            "obelisk_projection_lag_positions",
            "Head position minus checkpoint (not an event count on PostgreSQL).",
            labels=_LABELS,
        )
        seconds = GaugeMetricFamily(
            "obelisk_projection_lag_seconds",
            "Age of the newest applied event while behind; 0 when caught up.",
            labels=_LABELS,
        )
        applied = CounterMetricFamily(
            "obelisk_projection_events", "Events applied.", labels=_LABELS
        )
        letters = CounterMetricFamily(
            "obelisk_projection_dead_letters", "Events dead-lettered.", labels=_LABELS
        )
        batch_time = HistogramMetricFamily(
            "obelisk_projection_batch_seconds",
            "Time to apply and commit one batch.",
            labels=_LABELS,
        )
        batch_size = HistogramMetricFamily(
            "obelisk_projection_batch_events", "Events per batch.", labels=_LABELS
        )
        for runner in runners():
            labels = [runner.name, str(runner.partition)]
            lag = runner.known_lag()
            position.add_metric(labels, runner.position)
            behind.add_metric(labels, lag.positions)
            seconds.add_metric(labels, lag.seconds)
            applied.add_metric(labels, runner.events_applied)
            letters.add_metric(labels, runner.dead_lettered)
            batch_time.add_metric(labels, runner.batch_seconds.buckets(), runner.batch_seconds.sum)
            batch_size.add_metric(labels, runner.batch_events.buckets(), runner.batch_events.sum)
        yield from (position, behind, seconds, applied, letters, batch_time, batch_size)

    return collect
