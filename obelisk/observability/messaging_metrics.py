"""Relay and worker metrics: published, duplicates, handled, retries, dead letters.

Read from the relay's and workers' own counters at scrape time. A relay is a projection
runner, so its checkpoint and lag come with ``Metrics.watch_projection`` (projection name
``relay:<name>``); ``watch_relay`` adds what it published. Labels: the relay's name, the
worker's group — both set in code, never from message content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from obelisk.messaging.relay import OutboxRelay
    from obelisk.messaging.worker import MessageWorker

__all__ = ["relay_source", "worker_source"]


def relay_source(relay: OutboxRelay) -> Callable[[], Iterator[Any]]:
    def collect() -> Iterator[Any]:
        labels = [relay.name]
        published = CounterMetricFamily(
            "obelisk_relay_published", "Messages the relay published.", labels=["relay"]
        )
        published.add_metric(labels, relay.published)
        duplicates = CounterMetricFamily(
            "obelisk_relay_duplicates",
            "Messages the broker dropped as already published (after a relay restart).",
            labels=["relay"],
        )
        duplicates.add_metric(labels, relay.duplicates)
        seconds = CounterMetricFamily(
            "obelisk_relay_publish_seconds", "Time spent publishing.", labels=["relay"]
        )
        seconds.add_metric(labels, relay.publish_seconds)
        undecodable = CounterMetricFamily(
            "obelisk_relay_undecodable",
            "Events the relay could not decode and published as stored.",
            labels=["relay"],
        )
        undecodable.add_metric(labels, relay.undecodable)
        yield from (published, duplicates, seconds, undecodable)

    return collect


def worker_source(worker: MessageWorker) -> Callable[[], Iterator[Any]]:
    def collect() -> Iterator[Any]:
        labels = [worker.group]
        for name, value, doc in (
            ("obelisk_worker_handled", worker.handled, "Messages handled."),
            ("obelisk_worker_retries", worker.retries, "Handler attempts retried."),
            ("obelisk_worker_dead_letters", worker.dead_lettered, "Messages dead-lettered."),
            ("obelisk_worker_duplicates", worker.duplicates,
             "Redelivered messages the inbox absorbed."),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc, labels=["group"])
            family.add_metric(labels, value)
            yield family
        waiting = GaugeMetricFamily(
            "obelisk_worker_waiting", "Messages fetched and not yet handled.", labels=["group"]
        )
        waiting.add_metric(labels, worker._waiting)
        yield waiting
        histogram = HistogramMetricFamily(
            "obelisk_worker_handler_seconds", "Handler time per message.", labels=["group"]
        )
        histogram.add_metric(labels, worker.handler_seconds.buckets(), worker.handler_seconds.sum)
        yield histogram
        lag = HistogramMetricFamily(
            "obelisk_worker_lag_seconds",
            "From an event's commit to its handler's start (relayed events).",
            labels=["group"],
        )
        lag.add_metric(labels, worker.lag_seconds.buckets(), worker.lag_seconds.sum)
        yield lag
        last = GaugeMetricFamily(
            "obelisk_worker_last_lag_seconds",
            "The lag of the last message handled.",
            labels=["group"],
        )
        last.add_metric(labels, worker.last_lag)
        yield last

    return collect
