"""NATS JetStream adapter: a stream per topic, a durable pull consumer per group.

* A topic ``Account.events`` is the stream ``OBELISK_Account_events`` over the subjects
  ``OBELISK.Account_events.>`` (names in ``_nats_names``). A message goes to
  ``OBELISK.Account_events.<its subject>`` when its subject is a valid NATS token sequence
  (``Account.MoneyDeposited``), else to ``...._``: NATS consumers can filter on it.
* The message travels whole, encoded with msgpack as on Redis; NATS headers carry only what
  the server acts on (``Nats-Msg-Id`` for its de-duplication window, the sequence and the
  publish expectations). Why not map headers to NATS headers: nats-py strips and rewrites
  header values, and one encoding for every adapter keeps messages byte-identical.
  Entries that do not decode are delivered marked malformed (header ``obelisk-malformed``).
* Sequenced publishing: the last sequence lives on the stream itself, and every batch is
  a chain of expectations the server checks; see ``_nats_publish`` for how and why.
* A group is a durable pull consumer (explicit ack, ``ack_wait`` = the consumer's
  ``ack_timeout``, unlimited deliveries: workers dead-letter by ``attempt``, which is the
  server's delivery count). ``read`` cursors are stream sequence numbers.
* The connection reconnects by itself, forever; calls made while it is down raise
  BrokerUnavailable at once, and work again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from obelisk.errors import BrokerError, BrokerUnavailable
from obelisk.messaging._nats_names import (
    consumer_name,
    stream_name,
    topic_subjects,
    validate_prefix,
)
from obelisk.messaging._nats_pipeline import Outgoing, Pipeline, check, translated
from obelisk.messaging._nats_publish import Publisher
from obelisk.messaging._nats_pull import Puller
from obelisk.messaging.broker import Broker, Published, TopicMessage
from obelisk.messaging.message import MALFORMED, Delivery, Message

__all__ = ["NatsBroker"]

_log = logging.getLogger(__name__)
_decoder = msgspec.msgpack.Decoder(Message)
_DEFAULT_ACK_WAIT: Final = 30.0
_READ_WINDOW: Final = 256  # direct gets in flight at once
_SUBJECTS_OVERLAP: Final = 10065  # "subjects overlap with an existing stream"
_STREAM_NAME_IN_USE: Final = 10058  # "stream name already in use with a different configuration"


class NatsBroker(Broker):
    """Args:
    url: ``nats://host:port`` (several, comma-separated, for a cluster).
    stream_prefix: starts every stream name and subject (applications sharing a NATS
        account use different prefixes).
    timeout: bound on each request, and on waiting for a batch's acknowledgements.
    """

    name = "nats"

    def __init__(self, url: str, *, stream_prefix: str = "OBELISK", timeout: float = 5.0) -> None:
        self.url = url
        self.prefix = validate_prefix(stream_prefix)
        self.timeout = timeout
        self._nc: Any = None
        self._js: Any = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        self._streams: set[str] = set()  # topics whose stream exists (created or seen)
        self._subs: dict[tuple[str, str, str], Puller] = {}  # (topic, group, consumer)
        self._fetching: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._ack_waits: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"NatsBroker({self.url!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = Client()
        try:
            # Reconnect forever (a restarted server must not end the broker), so the first
            # connection is bounded here instead.
            async with asyncio.timeout(self.timeout):
                await nc.connect(
                    self.url.split(","),
                    name="obelisk",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]
                    connect_timeout=max(1, int(self.timeout)),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_disconnected,
                )
        except Exception as exc:
            await _quietly(nc.close())
            raise BrokerUnavailable(f"nats: cannot connect to {self.url}: {exc!r}") from exc
        pipeline = Pipeline(nc, self.timeout)
        try:
            with translated("subscribe"):
                await pipeline.start()
        except BaseException:
            await _quietly(nc.close())
            raise
        self._nc, self._js, self._pipeline = nc, nc.jetstream(timeout=self.timeout), pipeline
        self._publisher = Publisher(
            pipeline, self._js, self.prefix, self._ensure_stream, self._streams.discard
        )

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._js = self._pipeline = self._publisher = None
        self._streams.clear()
        self._subs.clear()
        self._fetching.clear()
        self._ack_waits.clear()
        if nc is not None:
            # close() flushes what is buffered; bounded, as the server may be gone.
            try:
                async with asyncio.timeout(self.timeout):
                    await nc.close()
            except TimeoutError:
                _log.warning("nats: closing %s timed out", self.url)

    async def _on_error(self, exc: Exception) -> None:
        _log.debug("nats: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._pipeline is not None:
            self._pipeline.connection_lost()

    async def _on_reconnected(self) -> None:
        _log.info("nats: reconnected to %s", self.url)

    @property
    def js(self) -> Any:
        """The nats-py JetStream context (for tools and tests)."""
        if self._js is None:
            raise BrokerError(f"{self!r} is not open")
        return self._js

    @property
    def client(self) -> Any:
        """The nats-py client (for tools and tests)."""
        if self._nc is None:
            raise BrokerError(f"{self!r} is not open")
        return self._nc

    def _connected(self) -> Any:
        js = self.js
        if not self._nc.is_connected:
            raise BrokerUnavailable("nats: not connected (reconnecting)")
        return js

    def stream_name(self, topic: str) -> str:
        """The JetStream stream holding ``topic``."""
        return stream_name(self.prefix, topic)

    async def _ensure_stream(self, topic: str) -> str:
        stream = stream_name(self.prefix, topic)
        if topic in self._streams:
            return stream
        subjects = topic_subjects(self.prefix, topic)
        config = api.StreamConfig(
            name=stream,
            description=f"obelisk topic {topic}",
            subjects=[subjects],
            retention=api.RetentionPolicy.LIMITS,  # kept after acks: read() and length()
            storage=api.StorageType.FILE,
            allow_direct=True,  # read() and the sequence lookups use direct gets
        )
        js = self._connected()
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code not in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
                raise BrokerError(f"nats refused stream {stream!r}: {exc.description}") from exc
            # It exists with another configuration (an operator tuned limits or replicas),
            # or another process created it a moment ago (the server then says the
            # subjects overlap): use it if it holds this topic's subjects.
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise BrokerError(
                    f"nats refused stream {stream!r}: {exc.description}"
                ) from exc
            if subjects not in (info.config.subjects or []):
                raise BrokerError(
                    f"nats stream {stream!r} exists but does not hold {subjects!r}"
                ) from None
        self._streams.add(topic)
        return stream

    # -- publishing -------------------------------------------------------------------------

    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        if sequences is not None and len(sequences) != len(messages):
            raise BrokerError("one sequence per message")
        if not messages:
            return Published(0, 0)
        self._connected()
        assert self._publisher is not None
        with translated("publish"):
            if sequences is None:
                return await self._publisher.publish(messages)
            return await self._publisher.publish_sequenced(messages, sequences)

    # -- consuming --------------------------------------------------------------------------

    async def create_group(self, topic: str, group: str, *, from_now: bool = False) -> None:
        durable = consumer_name(group)
        with translated(f"create group {group!r} on {topic!r}"):
            stream = await self._ensure_stream(topic)
            js = self._connected()
            try:
                await js.consumer_info(stream, durable)
                return
            except nats.js.errors.NotFoundError:
                pass
            config = api.ConsumerConfig(
                durable_name=durable,
                description=f"obelisk group {group}",
                deliver_policy=api.DeliverPolicy.NEW if from_now else api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=_DEFAULT_ACK_WAIT,
                max_deliver=-1,  # workers dead-letter by attempt; the server never drops
                max_ack_pending=-1,  # as on Redis: no cap on unacknowledged messages
            )
            try:
                await js.add_consumer(stream, config)
            except nats.js.errors.BadRequestError:
                # Created meanwhile by another process (with its own ack_wait): fine.
                await js.consumer_info(stream, durable)

    async def _subscription(
        self, topic: str, group: str, consumer: str, ack_timeout: float
    ) -> Puller:
        key = (topic, group, consumer)
        sub = self._subs.get(key)
        if sub is not None and self._ack_waits.get((topic, group)) == ack_timeout:
            return sub
        stream, durable = stream_name(self.prefix, topic), consumer_name(group)
        js = self._connected()
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            raise BrokerError(f"no group {group!r} on topic {topic!r}") from None
        if info.config.ack_wait != ack_timeout:
            # The server redelivers after the consumer's ack_wait: keep it the caller's.
            info.config.ack_wait = ack_timeout
            await js.add_consumer(stream, info.config)
        self._ack_waits[(topic, group)] = ack_timeout
        if sub is None:
            sub = Puller(self._nc, stream, durable, timeout=self.timeout)
            await sub.start()
            self._subs[key] = sub
        return sub

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
        key = (topic, group, consumer)
        # One fetch at a time per subscription: parallel fetches would take each other's
        # messages and status replies.
        lock = self._fetching.setdefault(key, asyncio.Lock())
        with translated(f"consume {topic!r} as {group!r}"):
            self._connected()  # not a wait of ``wait`` seconds for nothing: say so now
            async with lock:
                sub = await self._subscription(topic, group, consumer, ack_timeout)
                try:
                    msgs = await sub.fetch(max(1, max_messages), wait)
                except Exception:
                    # Look at the group again next time (it may have been deleted).
                    if self._subs.pop(key, None) is sub:
                        await _quietly(sub.stop())
                    raise
        return [self._delivery(topic, msg) for msg in msgs]

    def _delivery(self, topic: str, msg: Any) -> Delivery:
        metadata = msg.metadata
        message = _decode(topic, metadata.sequence.stream, msg.subject, msg.data)
        return Delivery(message, int(metadata.num_delivered), msg)

    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        items = []
        for delivery in deliveries:
            reply = getattr(delivery.handle, "reply", None)
            if not isinstance(reply, str) or not reply.startswith("$JS.ACK."):
                raise BrokerError(f"{delivery!r} was not delivered by a NatsBroker")
            items.append(Outgoing(reply, b"+ACK"))
        self._connected()
        assert self._pipeline is not None
        with translated(f"ack on {topic!r}"):
            for answer in await self._pipeline.send(items):
                check(answer, f"an ack on {topic!r}")

    # -- tools ------------------------------------------------------------------------------

    async def _state(self, topic: str) -> Any | None:
        """The stream's state, or None when the topic has no stream yet."""
        try:
            info = await self._connected().stream_info(stream_name(self.prefix, topic))
        except nats.js.errors.NotFoundError:
            return None
        return info.state

    async def read(
        self, topic: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicMessage]:
        try:
            start = 1 if after is None else int(after) + 1
        except ValueError:
            raise BrokerError(f"{after!r} is not a cursor of a NatsBroker") from None
        stream = stream_name(self.prefix, topic)
        js = self.js

        async def get(seq: int) -> TopicMessage | None:
            try:
                raw = await js.get_msg(stream, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:  # deleted
                return None
            return TopicMessage(str(seq), _decode(topic, seq, raw.subject, raw.data or b""))

        out: list[TopicMessage] = []
        with translated(f"read {topic!r}"):
            state = await self._state(topic)
            if state is None:
                return []
            seq, last = max(start, int(state.first_seq)), int(state.last_seq)
            # Sequence numbers are the cursors: fetch a window of them at once and skip
            # the deleted ones, until the page is full or the stream ends.
            while len(out) < limit and seq <= last:
                window = range(seq, min(last, seq + min(limit - len(out), _READ_WINDOW) - 1) + 1)
                found = await asyncio.gather(*(get(s) for s in window))
                out.extend(item for item in found if item is not None)
                seq = window[-1] + 1
        return out[:limit]

    async def length(self, topic: str) -> int:
        with translated(f"length of {topic!r}"):
            state = await self._state(topic)
        return 0 if state is None else int(state.messages)

    async def pending(self, topic: str, group: str) -> int:
        with translated(f"pending of {group!r} on {topic!r}"):
            js = self._connected()
            try:
                info = await js.consumer_info(stream_name(self.prefix, topic), consumer_name(group))
            except nats.js.errors.NotFoundError:
                return await self.length(topic)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def delete_topic(self, topic: str) -> None:
        stream = stream_name(self.prefix, topic)
        for key in [key for key in self._subs if key[0] == topic]:
            await _quietly(self._subs.pop(key).stop())
        for pair in [pair for pair in self._ack_waits if pair[0] == topic]:
            del self._ack_waits[pair]
        self._streams.discard(topic)
        if self._publisher is not None:
            self._publisher.forget(topic)
        with translated(f"delete {topic!r}"):
            try:
                await self._connected().delete_stream(stream)
            except nats.js.errors.NotFoundError:
                pass


def _decode(topic: str, seq: int, subject: str, data: bytes) -> Message:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:  # (deep nesting: the latter)
        reason = f"not an obelisk message (on {subject}): {exc}"
    ident = str(seq)
    return Message(ident, topic, "", ident, bytes(data), {MALFORMED: reason})


async def _quietly(cleanup: Awaitable[object]) -> None:
    """Await a best-effort cleanup (unsubscribing, closing a half-made client)."""
    try:
        async with asyncio.timeout(1.0):
            await cleanup
    except Exception as exc:  # what it cleans up is being dropped anyway
        _log.debug("nats: cleanup failed: %r", exc)
