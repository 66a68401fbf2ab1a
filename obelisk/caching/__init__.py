"""Caching at the query layer: an in-process query cache with single-flight loads and tag
invalidation driven by projections, HTTP validators, cross-process invalidation, and a
shared second level in Redis."""

from typing import TYPE_CHECKING

from obelisk.caching._results import Cached, CacheStats, etag
from obelisk.caching.http import cache_headers, not_modified
from obelisk.caching.query_cache import QueryCache, SharedCache, SharedCacheError, SharedLookup

if TYPE_CHECKING:  # imported lazily at run time (see __getattr__); typed for checkers
    from obelisk.caching.redis_cache import RedisQueryCache
    from obelisk.caching.redis_invalidation import RedisInvalidation

__all__ = [
    "CacheStats",
    "Cached",
    "QueryCache",
    "RedisInvalidation",
    "RedisQueryCache",
    "SharedCache",
    "SharedCacheError",
    "SharedLookup",
    "cache_headers",
    "etag",
    "not_modified",
]


def __getattr__(name: str) -> object:
    # These need redis-py: imported when asked for.
    if name == "RedisInvalidation":
        from obelisk.caching.redis_invalidation import RedisInvalidation

        return RedisInvalidation
    if name == "RedisQueryCache":
        from obelisk.caching.redis_cache import RedisQueryCache

        return RedisQueryCache
    raise AttributeError(f"module 'obelisk.caching' has no attribute {name!r}")
