"""The port of the query cache's shared layer (its Redis adapter:
:mod:`obelisk.caching.redis_cache`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from obelisk.errors import ObeliskError

__all__ = ["SharedCache", "SharedCacheError", "SharedLookup"]


class SharedCacheError(ObeliskError):
    """The shared layer could not answer (unreachable, timed out, refused the command).

    :class:`QueryCache` never lets it fail a query: the loader answers instead."""


@dataclass(frozen=True, slots=True)
class SharedLookup:
    """What the shared layer holds for a key: ``data`` (None on a miss, or when the value was
    built under other tag versions than the current ones) and the current versions of the
    key's tags there, read in the same round trip (handed back to ``store`` after a load)."""

    data: bytes | None
    versions: tuple[int, ...]


class SharedCache(Protocol):
    """A second-level cache that several processes' :class:`QueryCache` share
    (:class:`~obelisk.caching.redis_cache.RedisQueryCache`).

    ``lookup``, ``store`` and ``invalidate`` raise :class:`SharedCacheError` when the layer
    cannot answer; ``encode`` and ``decode`` raise :class:`~obelisk.errors.ValidationError`
    for values that do not fit.
    """

    def encode(self, value: Any) -> bytes:
        """``value`` as bytes."""
        ...

    def decode(self, data: bytes, type: Any = None) -> Any:
        """``data`` as ``type`` (None: builtins)."""
        ...

    async def lookup(self, key: str, tags: tuple[str, ...]) -> SharedLookup:
        """The value of ``key`` if it was built under the current versions of ``tags``, and
        those versions."""
        ...

    async def store(
        self, key: str, tags: tuple[str, ...], data: bytes, versions: tuple[int, ...]
    ) -> bool:
        """Store ``data`` for ``key`` only if ``tags`` are still at ``versions`` (those a
        lookup read before the load); whether it was stored."""
        ...

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        """Bump the versions of ``tags``: every value built under the old ones is a miss."""
        ...
