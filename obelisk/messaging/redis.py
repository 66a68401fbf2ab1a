"""Redis Streams adapter: topics are streams, groups are consumer groups.

* A topic ``t`` is the stream ``obelisk:t``; each entry holds one field, ``m``, the message
  encoded with msgpack. Entries that do not decode (written by something else) are still
  delivered, marked malformed (header ``obelisk-malformed``), so a worker can dead-letter
  them instead of choking on them.
* Sequenced publishing runs one Lua script per topic and batch: it appends only messages
  whose sequence is above the one stored at ``obelisk:t:seq``, and stores the new highest,
  atomically — a relay that publishes a batch twice appends it once.
* Redelivery: ``consume`` first claims entries other consumers of the group left
  unacknowledged for ``ack_timeout`` (``XAUTOCLAIM``), then reads new ones
  (``XREADGROUP ... >``); a delivery's attempt is the group's delivery count for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from obelisk.errors import BrokerError, BrokerUnavailable
from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.message import MALFORMED, Delivery, Message, validate_topic

__all__ = ["MALFORMED", "RedisBroker", "redis_client"]

_MAX_EXACT: Final = 2**53  # Lua numbers are doubles: sequences above this would round

_PUBLISH_SEQUENCED: Final = """
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
local new = 0
for i = 1, #ARGV, 2 do
  local sequence = tonumber(ARGV[i])
  if sequence > last then
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[i + 1])
    last = sequence
    new = new + 1
  end
end
redis.call('SET', KEYS[2], string.format('%.0f', last))
return new
"""

_encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(Message)


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"redis: {exc}")


def redis_client(url: str, *, max_connections: int = 64) -> Any:
    """A redis-py asyncio client whose pool *waits* for a free connection when all are in
    use (the default pool fails with MaxConnectionsError: a burst of concurrent publishes
    or a slow event loop would turn into errors)."""
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class RedisBroker(Broker):
    """Args:
    url: ``redis://host:port/db``.
    prefix: key prefix of the streams (several applications can share a Redis).
    """

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "obelisk:", max_connections: int = 64) -> None:
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self._client: Any = None
        self._claimed_at: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r})"

    def _key(self, topic: str) -> str:
        return self.prefix + validate_topic(topic)

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = redis_client(self.url, max_connections=self.max_connections)
        await self._call(self._client.ping())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BrokerError(f"{self!r} is not open")
        return self._client

    async def _call(self, awaitable: Any) -> Any:
        from redis import exceptions

        try:
            return await awaitable
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc
        except exceptions.ResponseError as exc:
            raise BrokerError(f"redis refused: {exc}") from exc

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        if sequences is not None and len(sequences) != len(messages):
            raise BrokerError("one sequence per message")
        if not messages:
            return Published(0, 0)
        client = self.client
        pipe = client.pipeline(transaction=False)
        if sequences is None:
            for message in messages:
                pipe.xadd(self._key(message.topic), {b"m": _encode(message)})
            await self._call(pipe.execute())
            return Published(len(messages), 0)
        by_topic: dict[str, list[bytes | str]] = {}
        for message, sequence in zip(messages, sequences, strict=True):
            if not 0 <= sequence < _MAX_EXACT:
                raise BrokerError(f"sequence {sequence} is outside 0..2**53")
            by_topic.setdefault(message.topic, []).extend((str(sequence), _encode(message)))
        for topic, argv in by_topic.items():
            key = self._key(topic)
            # EVAL, not EVALSHA: a restarted Redis has forgotten loaded scripts, and the
            # script's text is small beside a batch of messages.
            pipe.eval(_PUBLISH_SEQUENCED, 2, key, key + ":seq", *argv)
        counts = await self._call(pipe.execute())
        new = sum(int(c) for c in counts)
        return Published(new, len(messages) - new)

    # -- consuming ---------------------------------------------------------------------

    async def create_group(self, topic: str, group: str, *, from_now: bool = False) -> None:
        from redis import exceptions

        try:
            await self.client.xgroup_create(
                self._key(topic), group, id="$" if from_now else "0", mkstream=True
            )
        except exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis refused: {exc}") from exc
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def consume(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        max_messages: int = 100,
        wait: float = 1.0,
        ack_timeout: float = 30.0,
    ) -> list[Delivery]:
        key = self._key(topic)
        out = await self._reclaim(topic, key, group, consumer, max_messages, ack_timeout)
        if out:
            return out
        block = max(1, int(wait * 1000))
        reply = await self._call(
            self.client.xreadgroup(group, consumer, {key: ">"}, count=max_messages, block=block)
        )
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                out.append(self._delivery(topic, entry_id, fields, 1))
        return out

    async def _reclaim(
        self, topic: str, key: str, group: str, consumer: str, limit: int, ack_timeout: float
    ) -> list[Delivery]:
        # Claiming costs a round trip: look for stuck entries a few times per ack_timeout.
        now = time.monotonic()
        last = self._claimed_at.get((key, group), 0.0)
        if now - last < ack_timeout / 4:
            return []
        self._claimed_at[(key, group)] = now
        reply = await self._call(
            self.client.xautoclaim(
                key, group, consumer, int(ack_timeout * 1000), "0-0", count=limit
            )
        )
        entries = [(i, f) for i, f in reply[1] if f is not None]  # deleted entries: None
        if not entries:
            return []
        if len(entries) == limit:
            self._claimed_at[(key, group)] = 0.0  # more may be stuck: look again next time
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
        counts = await self._call(pipe.execute())
        out = []
        for (entry_id, fields), info in zip(entries, counts, strict=True):
            attempt = int(info[0]["times_delivered"]) if info else 2
            out.append(self._delivery(topic, entry_id, fields, attempt))
        return out

    def _delivery(
        self, topic: str, entry_id: bytes, fields: dict[bytes, bytes], attempt: int
    ) -> Delivery:
        raw = fields.get(b"m")
        if raw is not None:
            try:
                return Delivery(_decoder.decode(raw), attempt, entry_id)
            except (msgspec.DecodeError, RecursionError) as exc:  # (deep nesting: the latter)
                reason = f"not an obelisk message: {exc}"
        else:
            names = sorted(k.decode(errors="replace") for k in fields)
            reason = f"not an obelisk message: fields {names}"
        ident = entry_id.decode()
        shown = msgspec.json.encode({k.decode(errors="replace"): v.decode(errors="replace")
                                     for k, v in fields.items()})  # fmt: skip
        message = Message(ident, topic, "", ident, shown, {MALFORMED: reason})
        return Delivery(message, attempt, entry_id)

    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._call(
                self.client.xack(self._key(topic), group, *(d.handle for d in deliveries))
            )

    # -- tools -------------------------------------------------------------------------

    async def read(
        self, topic: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicMessage]:
        start = "-" if after is None else f"({after}"
        entries = await self._call(self.client.xrange(self._key(topic), start, "+", count=limit))
        out = []
        for entry_id, fields in entries:
            delivery = self._delivery(topic, entry_id, fields, 0)
            out.append(TopicMessage(entry_id.decode(), delivery.message))
        return out

    async def length(self, topic: str) -> int:
        return int(await self._call(self.client.xlen(self._key(topic))))

    async def pending(self, topic: str, group: str) -> int:
        key = self._key(topic)
        if not await self._call(self.client.exists(key)):
            return 0  # nothing published yet (XINFO GROUPS would fail with "no such key")
        groups = await self._call(self.client.xinfo_groups(key))
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = info.get("lag")
                if lag is None:  # Redis cannot tell (entries were deleted): count them
                    lag = await self.length(topic) - int(info.get("entries-read") or 0)
                return int(info.get("pending", 0)) + int(lag)
        return await self.length(topic)

    async def delete_topic(self, topic: str) -> None:
        key = self._key(topic)
        await self._call(self.client.delete(key, key + ":seq"))
