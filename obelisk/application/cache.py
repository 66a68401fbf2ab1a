"""The aggregate cache: the current instance of recently used aggregates, in process.

Commands on one aggregate run one at a time in a process (the keyed lock) and the cache is
updated only by a successful commit, so a cached instance is exactly what the store holds
as far as this process knows: a hit needs no database round trip. Another process may
still have written; the append's expected-version check catches it, the entry is evicted
and the command fails with ConcurrencyError or is retried, per its policy.

Only units of work use the cache. ``Application.get`` (queries) always loads a fresh
instance, so a query never holds a reference a command could change under it.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

from obelisk.domain.aggregate import Aggregate

__all__ = ["AggregateCache", "approximate_size"]


class AggregateCache:
    """An LRU of aggregates by id, bounded by entries; ``maxsize=0`` disables it.

    ``max_bytes`` also bounds it by an approximate size: each entry counts its instance,
    its attribute dict and each attribute value (and the items of list, dict and set
    values) by ``sys.getsizeof``, measured when it is put. Nested objects deeper than that
    are not counted. Without ``max_bytes`` nothing is measured.
    """

    def __init__(self, maxsize: int = 10_000, *, max_bytes: int | None = None) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Aggregate] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, aggregate_id: object) -> bool:
        return aggregate_id in self._entries

    def get(self, aggregate_id: str, cls: type[Aggregate]) -> Aggregate | None:
        """The cached instance of ``aggregate_id`` if it is a ``cls``, else None (a miss)."""
        entry = self._entries.get(aggregate_id)
        if entry is None or type(entry) is not cls:
            self.misses += 1
            return None
        self._entries.move_to_end(aggregate_id)
        self.hits += 1
        return entry

    def put(self, aggregate: Aggregate) -> None:
        """Cache ``aggregate`` as current (call only after its events committed)."""
        if self.maxsize == 0:
            return
        entries = self._entries
        entries[aggregate.id] = aggregate
        entries.move_to_end(aggregate.id)
        if self.max_bytes is not None:
            self._measure(aggregate)
        while len(entries) > self.maxsize:
            self._drop_oldest()

    def _measure(self, aggregate: Aggregate) -> None:
        size = approximate_size(aggregate)
        self.bytes += size - self._sizes.get(aggregate.id, 0)
        self._sizes[aggregate.id] = size
        assert self.max_bytes is not None
        # The newest entry stays even when it alone is over the bound.
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        aggregate_id, _ = self._entries.popitem(last=False)
        self.bytes -= self._sizes.pop(aggregate_id, 0)
        self.evictions += 1

    def evict(self, aggregate_id: str) -> None:
        """Forget ``aggregate_id`` (its cached state may no longer be current)."""
        if self._entries.pop(aggregate_id, None) is not None:
            self.bytes -= self._sizes.pop(aggregate_id, 0)
            self.evictions += 1

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._sizes.clear()
        self.bytes = 0


def approximate_size(aggregate: Aggregate) -> int:
    """About how many bytes ``aggregate`` holds (see :class:`AggregateCache`)."""
    attributes = vars(aggregate)
    size = sys.getsizeof(aggregate) + sys.getsizeof(attributes)
    for value in attributes.values():
        size += sys.getsizeof(value)
        if isinstance(value, list | set | frozenset | tuple):
            size += sum(sys.getsizeof(item) for item in value)
        elif isinstance(value, dict):
            size += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in value.items())
    return size
