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
* **Shared layer** (optional, ``shared=``): a second level several processes share
  (:class:`~obelisk.caching.redis_cache.RedisQueryCache`). On a local miss the single-flight
  leader asks it first; on its miss the loader runs and the result is written back. The
  layer keeps versions of its own per tag: a value is a hit only under the versions it was
  built under, a write after a load is refused if a tag was invalidated meanwhile, and
  ``invalidate`` bumps them (then tells the listeners, so a process told of an invalidation
  never reads the value it replaced). A shared layer that fails never fails a query: the
  loader answers and ``stats.shared_errors`` counts it.

Across processes, :class:`~obelisk.caching.redis_invalidation.RedisInvalidation` publishes
invalidations on a Redis channel so every process's cache drops the entry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from obelisk._arguments import check_int, check_seconds, check_text
from obelisk.caching._checks import check_key, check_load, check_tags, run_loader
from obelisk.caching._results import _EPOCH as _EPOCH  # the process's ETag epoch
from obelisk.caching._results import Cached, CacheStats
from obelisk.caching._shared import SharedCache, SharedCacheError, SharedLookup
from obelisk.errors import ValidationError

__all__ = [
    "CacheStats",
    "Cached",
    "QueryCache",
    "SharedCache",
    "SharedCacheError",
    "SharedLookup",
]

T = TypeVar("T")

_log = logging.getLogger("obelisk.caching")
_WARN_EVERY_S = 10.0  # at most one "shared layer failing" warning per this many seconds


class QueryCache:
    """In-process cache of query results with single-flight loads and tag invalidation.

    Args:
        max_entries: entries kept (least recently used evicted).
        ttl: seconds an entry may serve at most (None: until invalidated).
        shared: a second level several processes share (a :class:`SharedCache` such as
            :class:`~obelisk.caching.redis_cache.RedisQueryCache`). With one, every result
            is encoded: one that cannot be fails its query with ValidationError (the same
            way in every process, Redis up or down); results are served as decoded, so a
            process serves the same shape whether it loaded a result or read it there.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl: float | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self.max_entries = check_int("max_entries", max_entries, 1)
        self.ttl = None if ttl is None else check_seconds("ttl", ttl)
        self.shared = shared
        self.stats = CacheStats()
        self._entries: OrderedDict[str, tuple[Cached[Any], tuple[str, ...]]] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._flights: dict[str, asyncio.Future[Cached[Any]]] = {}
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []
        # The shared layer's background work: writes after loads, version bumps after
        # invalidations. A tag whose bump is in flight is in _bumping; one whose bump failed
        # is owed (paid before this process's next lookup, and by flush()).
        self._writes: set[asyncio.Task[None]] = set()
        self._bumps: set[asyncio.Task[None]] = set()
        self._bumping: dict[str, int] = {}
        # tag -> the generation it became owed in: a payment forgives only the generations
        # it paid (a tag owed again meanwhile, by a bump that failed, stays owed).
        self._owed: dict[str, int] = {}
        self._owed_generation = 0
        self._paying: asyncio.Future[None] | None = None
        self._warned_at = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def version(self, tag: str) -> int:
        """The current version of ``tag`` (0 until first invalidated)."""
        return self._versions.get(check_text("cache tag", tag, nul=True), 0)

    def versions(self, tags: Iterable[str]) -> tuple[tuple[str, int], ...]:
        try:  # no check per tag: get() runs this twice per miss, on tags it checked
            return tuple((tag, self._versions.get(tag, 0)) for tag in tags)
        except TypeError:  # not iterable, or a tag that is no str
            check_tags(tags)
            raise

    async def get(
        self,
        key: str,
        load: Callable[[], Awaitable[T]],
        *,
        tags: Iterable[str] = (),
        type: Any = None,
    ) -> Cached[T]:
        """The cached result of ``key``, or ``load()``'s (run once for concurrent misses).

        ``tags`` name what the result depends on; invalidating any of them drops it.
        With a shared layer, ``type`` is what results decode to — those read from it and
        the loader's own alike (None: builtins; a dataclass comes back as a dict, a tuple
        as a list); without one it is not used.
        """
        found = self._fresh(key)
        if found is not None:
            self.stats.hits += 1
            return found
        check_key(key)
        check_load(load)
        tag_list = check_tags(tags)
        self.stats.misses += 1
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.shared += 1
            return await asyncio.shield(flight)
        future: asyncio.Future[Cached[Any]] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        write: tuple[bytes, tuple[int, ...]] | None = None
        try:
            before = self.versions(tag_list)
            if self.shared is None:
                self.stats.loads += 1
                value: Any = await run_loader(load)
            else:
                value, write = await self._through_shared(key, load, tag_list, type)
            result = Cached(value, before, time.monotonic())
            if self.versions(tag_list) == before:
                self._store(key, result, tag_list)
            else:
                # Invalidated while loading: served, not kept — here nor in the shared layer.
                self.stats.stale_loads += 1
                write = None
            future.set_result(result)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it; nobody else must
            raise
        finally:
            del self._flights[key]
        if write is not None:
            self._spawn(self._write(key, tag_list, *write), self._writes)
        return result

    async def flush(self) -> None:
        """Wait for the shared layer's background work — writes after loads, version bumps
        after invalidations and the broadcasts that follow them — then try once more to pay
        bumps that failed. Without a shared layer there is nothing to wait for."""
        if pending := [t for t in (*self._writes, *self._bumps) if not t.done()]:
            await asyncio.wait(pending)  # those started so far (later ones: the next flush)
        if self._owed and self.shared is not None:
            try:
                await self._pay()
            except SharedCacheError as exc:
                self._shared_failed(exc)

    async def _through_shared(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        tags: tuple[str, ...],
        type: Any,
    ) -> tuple[Any, tuple[bytes, tuple[int, ...]] | None]:
        """The value from the shared layer, or loaded (then also what to write back)."""
        shared = self.shared
        assert shared is not None
        looked = await self._lookup(key, tags)
        if looked is not None:
            if looked.data is not None:
                try:
                    value = shared.decode(looked.data, type)
                except ValidationError:
                    pass  # written by other code (another type, an older release): a miss
                else:
                    self.stats.shared_hits += 1
                    return value, None
            self.stats.shared_misses += 1
        self.stats.loads += 1
        loaded = await run_loader(load)
        try:
            data = shared.encode(loaded)
            value = shared.decode(data, type)  # the shape other processes will be served
        except ValidationError as exc:
            raise ValidationError(f"query cache: the result of {key!r}: {exc}") from exc
        return value, (None if looked is None else (data, looked.versions))

    async def _lookup(self, key: str, tags: tuple[str, ...]) -> SharedLookup | None:
        """The shared layer's answer, or None when it failed (counted)."""
        assert self.shared is not None
        try:
            if self._owed or any(tag in self._bumping for tag in tags):
                # This process invalidated a tag and the shared layer may not know yet: a
                # lookup now could return the value the invalidation replaced.
                await self._settle()
            return await self.shared.lookup(key, tags)
        except SharedCacheError as exc:
            self._shared_failed(exc)
            return None

    async def _write(
        self, key: str, tags: tuple[str, ...], data: bytes, versions: tuple[int, ...]
    ) -> None:
        assert self.shared is not None
        try:
            await self.shared.store(key, tags, data, versions)
        except Exception as exc:  # background work: nobody to raise to; counted, logged
            self._shared_failed(exc)

    async def _settle(self) -> None:
        """Wait for version bumps in flight; pay owed ones (SharedCacheError if that fails)."""
        if pending := [t for t in self._bumps if not t.done()]:
            await asyncio.wait(pending)  # bumps never raise: they count their failures
        if self._owed:
            await self._pay()

    async def _pay(self) -> None:
        """Bump the owed tags' versions (one attempt shared by concurrent callers), then tell
        the listeners again: a process that reloaded from the shared layer while the bump
        was owed may hold the replaced value."""
        if self._paying is None:
            self._paying = asyncio.ensure_future(self._pay_owed())
            self._paying.add_done_callback(self._paid)
        await asyncio.shield(self._paying)

    async def _pay_owed(self) -> None:
        assert self.shared is not None
        owed = dict(self._owed)
        await self.shared.invalidate(tuple(owed))
        self._forgive(owed)
        self._announce(tuple(owed))

    def _owe(self, tags: tuple[str, ...]) -> None:
        for tag in tags:
            self._owed_generation += 1
            self._owed[tag] = self._owed_generation

    def _forgive(self, paid: dict[str, int]) -> None:
        for tag, generation in paid.items():
            if self._owed.get(tag) == generation:
                del self._owed[tag]

    def _paid(self, attempt: asyncio.Future[None]) -> None:
        self._paying = None
        if not attempt.cancelled():
            attempt.exception()  # its callers got it; unobserved otherwise

    async def _bump(self, tags: tuple[str, ...]) -> None:
        assert self.shared is not None
        owing = {tag: gen for tag, gen in self._owed.items() if tag not in tags}
        owed = tuple(owing)
        try:
            await self.shared.invalidate(tags + owed)
        except Exception as exc:  # background work: counted, logged, owed
            self._shared_failed(exc)
            self._owe(tags)
            owed = ()
        else:
            self._forgive(owing)
        finally:
            for tag in tags:
                left = self._bumping[tag] - 1
                if left:
                    self._bumping[tag] = left
                else:
                    del self._bumping[tag]
        # Told after the bump: a process that drops its entry on hearing of it and reloads
        # from the shared layer gets a miss, not the value this invalidation replaced.
        self._announce(tags + owed)

    def _spawn(self, work: Coroutine[Any, Any, None], group: set[asyncio.Task[None]]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        group.add(task)
        task.add_done_callback(group.discard)

    def _shared_failed(self, exc: BaseException) -> None:
        self.stats.shared_errors += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            _log.warning(
                "query cache: shared layer failing (%s); queries are answered by their "
                "loaders (%d failures so far)",
                exc,
                self.stats.shared_errors,
            )

    def peek(self, key: str) -> Cached[Any] | None:
        """The fresh entry of ``key`` without loading (None on a miss)."""
        return self._fresh(key)

    def _fresh(self, key: str) -> Cached[Any] | None:
        try:
            entry = self._entries.get(key)
        except TypeError:  # unhashable: no key at all
            check_key(key)
            raise
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
        entries were dropped. With ``broadcast``, the shared layer's versions are bumped
        too (in the background: ``flush`` waits for it) and listeners (other processes) are
        told. Without it (an invalidation another process published), only this process's
        entries go."""
        tags = check_tags(tags)
        dropped = 0
        for tag in tags:
            self._versions[tag] = self._versions.get(tag, 0) + 1
            for key in list(self._by_tag.get(tag, ())):
                self._drop(key)
                dropped += 1
        self.stats.invalidations += len(tags)
        if broadcast and tags:
            if self.shared is None:
                self._announce(tuple(tags))
            else:
                self._start_bump(tuple(tags))
        return dropped

    def _start_bump(self, tags: tuple[str, ...]) -> None:
        """Bump ``tags`` in the shared layer in the background; the listeners are told once
        it is done (``flush`` waits for it)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop running: owed, paid before the next lookup
            self._owe(tags)
            self._announce(tags)
            return
        for tag in tags:
            self._bumping[tag] = self._bumping.get(tag, 0) + 1
        self._spawn(self._bump(tags), self._bumps)

    def _announce(self, tags: tuple[str, ...]) -> None:
        if tags:
            for listener in self._listeners:
                listener(tags)

    def on_invalidate(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``listener(tags)`` after each local invalidation (to tell other processes).

        With a shared layer, after the layer's versions were bumped (in the background)."""
        self._listeners.append(listener)

    def clear(self) -> None:
        self._entries.clear()
        self._by_tag.clear()
