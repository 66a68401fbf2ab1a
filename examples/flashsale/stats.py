"""Live request statistics for the dashboard: requests/s and latency percentiles per
endpoint over the last few seconds.

Latencies go into log-spaced bins (about 4 % wide) kept per second; percentiles merge the
bins of the last ``window`` seconds. Recording is a dict lookup and a list increment — it
runs on every request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["EndpointStats", "LatencyBins", "RequestStats", "percentile"]

_GROWTH = math.log(1.04)
_BINS = 600  # 1 us .. about 16 min; larger values land in the last bin


def _bin(seconds: float) -> int:
    if seconds <= 1e-6:
        return 0
    return min(_BINS - 1, int(math.log(seconds / 1e-6) / _GROWTH) + 1)


def _upper(index: int) -> float:
    return 1e-6 * math.exp(index * _GROWTH)


@dataclass(slots=True)
class LatencyBins:
    """Counts of latencies in log-spaced bins."""

    counts: list[int] = field(default_factory=lambda: [0] * _BINS)
    total: int = 0

    def add(self, seconds: float) -> None:
        self.counts[_bin(seconds)] += 1
        self.total += 1

    def merge(self, other: LatencyBins) -> None:
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total


def percentile(bins: LatencyBins, q: float) -> float:
    """The ``q``-quantile (0..1) in seconds: the upper edge of the bin holding it."""
    if bins.total == 0:
        return 0.0
    rank = max(1, math.ceil(q * bins.total))
    seen = 0
    for index, count in enumerate(bins.counts):
        seen += count
        if seen >= rank:
            return _upper(index)
    return _upper(_BINS - 1)


@dataclass(slots=True)
class EndpointStats:
    """One endpoint: its total count and per-second bins of recent latencies."""

    requests: int = 0
    seconds: dict[int, LatencyBins] = field(default_factory=dict)

    def add(self, now: float, latency: float) -> None:
        self.requests += 1
        second = int(now)
        bins = self.seconds.get(second)
        if bins is None:
            bins = self.seconds[second] = LatencyBins()
            for old in [s for s in self.seconds if s < second - 60]:
                del self.seconds[old]
        bins.add(latency)

    def recent(self, now: float, window: int) -> LatencyBins:
        merged = LatencyBins()
        last = int(now)
        for second, bins in self.seconds.items():
            if last - window < second <= last:
                merged.merge(bins)
        return merged

    def rate(self, now: float) -> float:
        """Requests in the last complete second."""
        bins = self.seconds.get(int(now) - 1)
        return float(bins.total) if bins is not None else 0.0


class RequestStats:
    """Per-endpoint request counts and latencies (see the module docstring)."""

    def __init__(self, *, window: int = 5) -> None:
        self.window = window
        self.endpoints: dict[str, EndpointStats] = {}

    def record(self, endpoint: str, latency: float, now: float | None = None) -> None:
        found = self.endpoints.get(endpoint)
        if found is None:
            found = self.endpoints[endpoint] = EndpointStats()
        found.add(time.time() if now is None else now, latency)

    def snapshot(self, now: float | None = None) -> dict[str, object]:
        """Per-endpoint and overall figures, in the dashboard's JSON shape."""
        now = time.time() if now is None else now
        rows: list[dict[str, object]] = []
        overall = LatencyBins()
        for name, stats in sorted(self.endpoints.items()):
            recent = stats.recent(now, self.window)
            overall.merge(recent)
            rows.append({"name": name, "requests": stats.requests, "rate": stats.rate(now),
                         **_percentiles(recent)})  # fmt: skip
        return {"endpoints": rows, "latency": _percentiles(overall)}


def _percentiles(bins: LatencyBins) -> dict[str, float]:
    return {f"p{int(q * 100)}_ms": round(percentile(bins, q) * 1000, 3) for q in (0.5, 0.95, 0.99)}


def summarize(latencies: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99 (ms) of exact latencies (the demo's client-side measurements)."""
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    out = {}
    for q in (0.5, 0.95, 0.99):
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        out[f"p{int(q * 100)}_ms"] = round(ordered[index] * 1000, 3)
    return out
