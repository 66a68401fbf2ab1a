"""Invalidations across processes through Redis pub/sub.

Every process has its own :class:`~obelisk.caching.QueryCache`; the projection runs in one
of them (or in a worker process). ``RedisInvalidation`` publishes each local invalidation on
a channel and applies the ones other processes publish, so a changed row drops its cached
queries everywhere. A process that misses a message (its Redis connection dropped) clears
its cache when it reconnects: staleness is bounded by the reconnect, never unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec

from obelisk.caching.query_cache import QueryCache

__all__ = ["RedisInvalidation"]

_log = logging.getLogger("obelisk.caching")


class RedisInvalidation:
    """Keeps ``cache`` in step with other processes' caches through ``channel``."""

    def __init__(
        self, url: str, cache: QueryCache, *, channel: str = "obelisk:invalidations"
    ) -> None:
        self.url = url
        self.cache = cache
        self.channel = channel
        self.origin = uuid.uuid4().hex  # our own messages are not applied twice
        self.received = 0
        self._client: Any = None
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        cache.on_invalidate(self._publish)

    async def start(self) -> None:
        from obelisk.messaging.redis import redis_client

        self._client = redis_client(self.url)
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen(ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        self._stopped = True  # later invalidations are not published on a closing client
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _publish(self, tags: tuple[str, ...]) -> None:
        if self._client is None or self._stopped:
            return
        payload = msgspec.json.encode({"origin": self.origin, "tags": list(tags)})
        task = asyncio.create_task(self._client.publish(self.channel, payload))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _tags_of(self, data: object) -> list[str] | None:
        """The tags another process invalidated, or None for our own message or one that is
        not an invalidation (anyone can publish on the channel: a message of another shape
        or nested past the parser's depth must not end the listener)."""
        try:
            body = msgspec.json.decode(data)  # type: ignore[call-overload]
        except (msgspec.DecodeError, TypeError, RecursionError):
            return None
        if not isinstance(body, dict) or body.get("origin") == self.origin:
            return None
        tags = body.get("tags", ())
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            return None
        return list(tags)

    async def _listen(self, ready: asyncio.Event) -> None:
        from redis import exceptions

        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if not first:
                    self.cache.clear()  # messages may have been missed while away
                first = False
                ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    tags = self._tags_of(message.get("data"))
                    if tags is None:
                        continue
                    self.received += 1
                    self.cache.invalidate(*tags, broadcast=False)
            except (exceptions.ConnectionError, OSError) as exc:
                _log.warning("cache invalidations: %s; reconnecting", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
