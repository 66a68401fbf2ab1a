"""The query cache: read-model query results kept in process, loaded once under load.

* **Single-flight**: when many requests miss the same key at once, one loader runs and the
  others await its result — a cold key under a flash sale costs one database query, not
  hundreds.
* **Tags**: an entry names the read-model rows it was built from (``"section:A"``); the
  projection that changes those rows invalidates the tag after its batch commits
  (``ctx.invalidate("section:A")``), so an entry is never older than its rows' last batch.
* **Versions**: each tag has a counter bumped on invalidation; an entry remembers the
  counters it was built under, so a load that started before an invalidation is not
  stored as fresh (the race a plain "delete on change" cache loses). The versions also make
  HTTP validators: :func:`etag` of a result's versions answers ``If-None-Match`` with a 304
  without touching the database.
* **Bounds**: ``max_entries`` (least recently used out) and an optional ``ttl`` as a backstop.

Across processes, :class:`~obelisk.caching.redis_invalidation.RedisInvalidation` publishes
invalidations on a Redis channel so every process's cache drops the entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from obelisk.errors import ValidationError

__all__ = ["CacheStats", "Cached", "QueryCache"]

T = TypeVar("T")


@dataclass(slots=True)
class CacheStats:
    """Counters: ``loads`` is how many times a loader ran (single-flight keeps it low)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    shared: int = 0  # misses that awaited another request's load
    invalidations: int = 0
    stale_loads: int = 0  # loads finished after an invalidation of their tags: not stored

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


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
    digest = hashlib.blake2b(body.encode(), digest_size=8).hexdigest()
    return f'"{_EPOCH}-{digest}"'


class QueryCache:
    """In-process cache of query results with single-flight loads and tag invalidation.

    Args:
        max_entries: entries kept (least recently used evicted).
        ttl: seconds an entry may serve at most (None: until invalidated).
    """

    def __init__(self, *, max_entries: int = 10_000, ttl: float | None = None) -> None:
        if max_entries < 1:
            raise ValidationError("max_entries must be >= 1")
        if ttl is not None and ttl <= 0:
            raise ValidationError("ttl must be > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self.stats = CacheStats()
        self._entries: OrderedDict[str, tuple[Cached[Any], tuple[str, ...]]] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._flights: dict[str, asyncio.Future[Cached[Any]]] = {}
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def version(self, tag: str) -> int:
        """The current version of ``tag`` (0 until first invalidated)."""
        return self._versions.get(tag, 0)

    def versions(self, tags: Iterable[str]) -> tuple[tuple[str, int], ...]:
        return tuple((tag, self._versions.get(tag, 0)) for tag in tags)

    async def get(
        self, key: str, load: Callable[[], Awaitable[T]], *, tags: Iterable[str] = ()
    ) -> Cached[T]:
        """The cached result of ``key``, or ``load()``'s (run once for concurrent misses).

        ``tags`` name what the result depends on; invalidating any of them drops it.
        """
        found = self._fresh(key)
        if found is not None:
            self.stats.hits += 1
            return found
        self.stats.misses += 1
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.shared += 1
            return await asyncio.shield(flight)
        tag_list = tuple(tags)
        future: asyncio.Future[Cached[Any]] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            before = self.versions(tag_list)
            self.stats.loads += 1
            value = await load()
            result = Cached(value, before, time.monotonic())
            if self.versions(tag_list) == before:
                self._store(key, result, tag_list)
            else:
                self.stats.stale_loads += 1  # invalidated while loading: served, not kept
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it; nobody else must
            raise
        finally:
            del self._flights[key]

    def peek(self, key: str) -> Cached[Any] | None:
        """The fresh entry of ``key`` without loading (None on a miss)."""
        return self._fresh(key)

    def _fresh(self, key: str) -> Cached[Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        cached = entry[0]
        if self.ttl is not None and time.monotonic() - cached.stored_at > self.ttl:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return cached

    def _store(self, key: str, cached: Cached[Any], tags: tuple[str, ...]) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (cached, tags)
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry[1]:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def invalidate(self, *tags: str, broadcast: bool = True) -> int:
        """Drop every entry built from any of ``tags`` and bump their versions; how many
        entries were dropped. With ``broadcast``, listeners (other processes) are told."""
        dropped = 0
        for tag in tags:
            self._versions[tag] = self._versions.get(tag, 0) + 1
            for key in list(self._by_tag.get(tag, ())):
                self._drop(key)
                dropped += 1
        self.stats.invalidations += len(tags)
        if broadcast and tags:
            for listener in self._listeners:
                listener(tuple(tags))
        return dropped

    def on_invalidate(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``listener(tags)`` after each local invalidation (to tell other processes)."""
        self._listeners.append(listener)

    def clear(self) -> None:
        self._entries.clear()
        self._by_tag.clear()
