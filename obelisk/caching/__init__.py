"""Caching at the query layer: an in-process query cache with single-flight loads and tag
invalidation driven by projections, HTTP validators, and cross-process invalidation."""

from obelisk.caching.http import cache_headers, not_modified
from obelisk.caching.query_cache import Cached, CacheStats, QueryCache, etag

__all__ = [
    "CacheStats",
    "Cached",
    "QueryCache",
    "RedisInvalidation",
    "cache_headers",
    "etag",
    "not_modified",
]


def __getattr__(name: str) -> object:
    if name == "RedisInvalidation":  # needs redis-py: imported when asked for
        from obelisk.caching.redis_invalidation import RedisInvalidation

        return RedisInvalidation
    raise AttributeError(f"module 'obelisk.caching' has no attribute {name!r}")
