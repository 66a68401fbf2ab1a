"""The query cache's shared layer in Redis: results several processes reuse.

Each process keeps its own :class:`~obelisk.caching.QueryCache`; with
``QueryCache(shared=RedisQueryCache(url))`` a process's miss is answered from Redis when
another process already loaded the result, and its own loads are written there.

Keys (``prefix`` defaults to ``obelisk:qc``):

* ``<prefix>:v:<tag>`` — the tag's version, an integer bumped (``INCR``) by every
  invalidation of the tag. No expiry: a version that went back to an earlier number would
  make a value built under it current again.
* ``<prefix>:q:<key>`` — a result, with a TTL: msgpack of its tags, the versions of those
  tags it was built under, and the result itself (msgspec msgpack).

Why a stored result is never older than its tags' last invalidation:

* A lookup is one ``MGET`` of the value and its tags' versions; the value is a hit only if
  the versions it carries are the current ones.
* The write after a load is a Lua check-and-set: stored only if the tags' versions are still
  those the lookup read *before* the load. The projection commits its batch, then
  invalidates (bumps); a load that read the rows before the commit read the versions before
  the bump, so its write is refused — or, if it landed first, carries versions the bump made
  old. Either way no later lookup returns it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import msgspec
from redis import exceptions as redis_errors

from obelisk._arguments import check_int, check_seconds, check_text, describe
from obelisk.caching._checks import check_key, check_tags
from obelisk.caching.query_cache import SharedCacheError, SharedLookup
from obelisk.errors import ValidationError

__all__ = ["RedisQueryCache"]

R = TypeVar("R")

# KEYS[1]: the value; KEYS[2..]: the tags' versions. ARGV[1]: TTL in ms; ARGV[2]: the
# encoded entry; ARGV[3..]: the versions the lookup read before the load.
_STORE_IF_CURRENT: Final = """
for i = 2, #KEYS do
  if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 1] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return 1
"""

_BUMP: Final = """
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
end
return #KEYS
"""


class _Entry(msgspec.Struct, array_like=True, frozen=True):
    tags: tuple[str, ...]
    versions: tuple[int, ...]
    value: msgspec.Raw


_encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(_Entry).decode
_encode_value = msgspec.msgpack.Encoder().encode


class RedisQueryCache:
    """A :class:`~obelisk.caching.query_cache.SharedCache` in Redis.

    Args:
        url: ``redis://host:port/db``.
        prefix: key prefix (several applications or test runs can share one Redis).
        ttl: seconds a result lives in Redis (dead keys go away; tag versions stay).
        timeout: seconds one Redis call may take; past it the query goes to its loader.
        retry_after: seconds Redis is not asked again after a connection failure (queries
            go straight to their loaders instead of each waiting for a failing connection).
        max_connections: connections in the pool.

    ``start()``/``stop()`` (or ``async with``). Results are encoded with msgspec msgpack:
    ``QueryCache.get(..., type=...)`` says what to decode them to.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "obelisk:qc",
        ttl: float = 300.0,
        timeout: float = 1.0,
        retry_after: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.url = check_text("url", url)
        self.prefix = check_text("prefix", prefix, nul=True)
        self.ttl = check_seconds("ttl", ttl)
        self.timeout = check_seconds("timeout", timeout)
        self.retry_after = check_seconds("retry_after", retry_after, zero=True)
        self.max_connections = check_int("max_connections", max_connections, 1)
        self.stored = 0  # writes that went in
        self.refused = 0  # writes refused: a tag was invalidated during the load
        self.undecodable = 0  # values found that were not ours (left to expire or overwrite)
        self._client: Any = None
        self._store_script: Any = None
        self._bump_script: Any = None
        self._down_until = -1.0
        self._calls: set[asyncio.Task[Any]] = set()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

    def __repr__(self) -> str:
        return f"RedisQueryCache({self.url!r}, prefix={self.prefix!r})"

    async def start(self) -> None:
        """Create the client (connections are opened on first use: a Redis that is down now
        only means the loaders answer until it is up)."""
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from obelisk.messaging.redis import redis_client

        client = redis_client(self.url, max_connections=self.max_connections)
        # A cache must fail fast: no retries inside a call (``timeout`` bounds it anyway).
        client.set_retry(Retry(NoBackoff(), 0))
        self._store_script = client.register_script(_STORE_IF_CURRENT)
        self._bump_script = client.register_script(_BUMP)
        self._client = client

    async def stop(self) -> None:
        """Let the calls in flight finish, then close the connections. (To have every
        pending write and version bump done first, ``await QueryCache.flush()``.)"""
        await asyncio.sleep(0)  # tasks created just before stop() start their calls
        current = asyncio.current_task()
        if calls := [task for task in self._calls if task is not current]:
            await asyncio.wait(calls)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- keys -------------------------------------------------------------------------------

    def value_key(self, key: str) -> str:
        return f"{self.prefix}:q:{check_key(key)}"

    def version_key(self, tag: str) -> str:
        return f"{self.prefix}:v:{check_text('cache tag', tag, nul=True)}"

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        try:
            return _encode_value(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValidationError(
                f"cannot be stored in the shared cache ({exc}); return values msgspec can "
                "encode (builtins, dataclasses, msgspec Structs, datetimes, UUIDs, ...)"
            ) from exc

    def decode(self, data: bytes, type: Any = None) -> Any:
        try:
            decoder = self._decoders.get(type)
        except TypeError:  # an unhashable type annotation: not kept
            decoder = None
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValidationError(f"data must be bytes, got {describe(data)}")
        if decoder is None:
            try:
                decoder = (
                    msgspec.msgpack.Decoder(type) if type is not None else msgspec.msgpack.Decoder()
                )
            except (TypeError, ValueError, RecursionError) as exc:  # no type msgspec knows
                raise ValidationError(f"cannot decode as {describe(type)}: {exc}") from None
            try:
                self._decoders[type] = decoder
            except TypeError:
                pass
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # msgspec.ValidationError too
            raise ValidationError(f"does not decode as {describe(type)}: {exc}") from exc

    # -- the SharedCache calls --------------------------------------------------------------

    async def lookup(self, key: str, tags: tuple[str, ...]) -> SharedLookup:
        tags = check_tags(tags)
        client = self._require()
        keys = [self.value_key(key), *(self.version_key(tag) for tag in tags)]
        data, *raw_versions = await self._call("lookup", lambda: client.mget(keys))
        versions = tuple(0 if raw is None else int(raw) for raw in raw_versions)
        if data is None:
            return SharedLookup(None, versions)
        try:
            entry = _decode_entry(data)
        except msgspec.DecodeError:
            self.undecodable += 1
            return SharedLookup(None, versions)
        if entry.tags != tags or entry.versions != versions:
            return SharedLookup(None, versions)  # built under older versions (or other tags)
        return SharedLookup(bytes(entry.value), versions)

    async def store(
        self, key: str, tags: tuple[str, ...], data: bytes, versions: tuple[int, ...]
    ) -> bool:
        tags = check_tags(tags)
        if not isinstance(data, bytes):
            raise ValidationError(f"data must be bytes, got {describe(data)}")
        if not isinstance(versions, tuple) or len(versions) != len(tags):
            raise ValidationError(f"{len(tags)} tags but versions {describe(versions)}")
        for version in versions:
            check_int("version", version, 0)
        script = self._store_script
        self._require()
        entry = _encode_entry(_Entry(tags, versions, msgspec.Raw(data)))
        keys = [self.value_key(key), *(self.version_key(tag) for tag in tags)]
        args = [max(1, round(self.ttl * 1000)), entry, *versions]
        stored = bool(await self._call("store", lambda: script(keys=keys, args=args)))
        if stored:
            self.stored += 1
        else:
            self.refused += 1
        return stored

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        tags = check_tags(tags)
        if not tags:
            return
        script = self._bump_script
        self._require()
        keys = [self.version_key(tag) for tag in dict.fromkeys(tags)]
        await self._call("invalidate", lambda: script(keys=keys))

    async def versions(self, tags: tuple[str, ...]) -> tuple[int, ...]:
        """The current versions of ``tags`` in Redis (0: never invalidated)."""
        tags = check_tags(tags)
        client = self._require()
        keys = [self.version_key(tag) for tag in tags]
        raw = await self._call("versions", lambda: client.mget(keys)) if keys else []
        return tuple(0 if value is None else int(value) for value in raw)

    # -- plumbing ---------------------------------------------------------------------------

    def _require(self) -> Any:
        if self._client is None:
            raise SharedCacheError("redis query cache is not started (or stopped)")
        return self._client

    async def _call(self, what: str, call: Callable[[], Awaitable[R]]) -> R:
        """``call()`` within ``timeout``, Redis's failures as SharedCacheError."""
        if time.monotonic() < self._down_until:
            raise SharedCacheError(f"redis query cache: {what}: redis unavailable (backing off)")
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except (
            TimeoutError,
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            OSError,
        ) as exc:
            self._down_until = time.monotonic() + self.retry_after
            raise SharedCacheError(
                f"redis query cache: {what}: {str(exc) or type(exc).__name__}"
            ) from exc
        except redis_errors.RedisError as exc:  # refused (out of memory, read-only replica...)
            raise SharedCacheError(f"redis query cache: {what}: {exc}") from exc
        finally:
            if task is not None:
                self._calls.discard(task)
