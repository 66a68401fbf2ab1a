"""What the query cache hands out: results with their validators, and its counters."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CacheStats", "Cached", "etag"]

T = TypeVar("T")


@dataclass(slots=True)
class CacheStats:
    """Counters: ``loads`` is how many times a loader ran (single-flight keeps it low)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    shared: int = 0  # misses that awaited another request's load (single-flight)
    invalidations: int = 0
    stale_loads: int = 0  # results finished after an invalidation of their tags: not stored
    shared_hits: int = 0  # leader misses the shared layer answered (no load)
    shared_misses: int = 0  # leader misses the shared layer did not hold (a load followed)
    shared_errors: int = 0  # shared-layer calls that failed (the loader answered instead)

    @property
    def hit_ratio(self) -> float:
        """Local hits over local lookups (the shared layer not counted)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def shared_hit_ratio(self) -> float:
        """Shared-layer hits over the shared-layer lookups that got an answer."""
        total = self.shared_hits + self.shared_misses
        return self.shared_hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """A result and the tag versions it was built under (its validator)."""

    value: T
    versions: tuple[tuple[str, int], ...]
    stored_at: float

    @property
    def etag(self) -> str:
        """A strong HTTP entity tag of this result's versions."""
        return etag(self.versions)


# Versions count from 0 in each process: a process started later would hand out, for new
# data, the tag an older process gave old data. The epoch keeps their ETags apart (a
# client switching processes gets one 200 instead of a wrong 304).
_EPOCH = uuid.uuid4().hex[:8]


def etag(versions: Iterable[tuple[str, int]]) -> str:
    """An HTTP entity tag for a result built under these tag versions (in this process)."""
    body = ";".join(f"{tag}={version}" for tag, version in sorted(versions))
    digest = hashlib.blake2b(body.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f'"{_EPOCH}-{digest}"'
