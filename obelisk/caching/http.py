"""HTTP validators for cached read-model results: ETag, If-None-Match, Cache-Control.

A query handler answers ``304 Not Modified`` when the client's ``If-None-Match`` names the
entity tag of the current result — decided from the cache's tag versions, without running
the query (the versions say whether the rows changed since).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["cache_headers", "not_modified"]


def not_modified(request_headers: Mapping[str, str], etag: str) -> bool:
    """Whether the request's ``If-None-Match`` already names ``etag`` (answer 304)."""
    value = None
    for name, candidate in request_headers.items():
        if name.lower() == "if-none-match":
            value = candidate
            break
    if value is None:
        return False
    if value.strip() == "*":
        return True
    tags = [tag.strip().removeprefix("W/") for tag in value.split(",")]
    return etag in tags


def cache_headers(etag: str, *, max_age: int = 0, private: bool = False) -> dict[str, str]:
    """Response headers for a cached result: its ETag and a Cache-Control telling clients
    (and shared caches, unless ``private``) how long they may reuse it without asking."""
    scope = "private" if private else "public"
    return {"etag": etag, "cache-control": f"{scope}, max-age={max(0, max_age)}"}
