"""Publishing on JetStream for NatsBroker, sequenced publishing above all.

**Where the last sequence lives.** A sequenced message carries its sequence in the header
``Obelisk-Sequence``, so the stream itself remembers the topic's last published sequence:
it is the header of the last message that has one. Nothing else has to be written, and
nothing can disagree with the stream (a counter kept beside it could, after a crash between
the two writes). JetStream's own de-duplication (``Nats-Msg-Id``) is not enough: it only
remembers the ids of its duplicate window (two minutes), and a relay restarted after that
would publish its last batch again.

**Learning it.** Before the first sequenced batch to a topic the publisher reads the
stream's last sequence number and that message's header (two requests). When the last
messages carry no header (unsequenced publishes after the sequenced ones) it reads further
back, a growing window at a time, to the last one that does: mixing both on one topic makes
that first lookup slower, not wrong. The result is kept (``_Head``) and advanced by every
batch, so a relay pays the lookup once per process.

**Publishing a batch safely, pipelined.** Messages whose sequence is not above the known
last one are dropped here. The rest go out back to back (one wait for all the answers) as a
chain JetStream checks atomically, message by message: the first carries
``Nats-Expected-Last-Sequence`` (the stream's last sequence number as this process knows
it), each next one ``Nats-Expected-Last-Msg-Id`` (the id of the one before it). So a
message is stored only right after its predecessor: if another publisher (another relay
during a failover, or any publisher of the topic) wrote in between, or the known head is
stale, the server refuses the rest of the chain instead of storing it out of order or with
a gap. The publisher then reads the head again and retries the refused messages, dropping
those the other publisher's writes made duplicates. Every decision to store is therefore
made by the server against the stream as it is: concurrent publishers are safe, and only
pay retries. (A chain link can also pass when the stream's last message is another copy of
the predecessor, stored by someone else: then the predecessor is published, and the link
is right to pass.)

Why two kinds of expectation: with ``Expected-Last-Sequence`` on every link, a refused
message k could be followed by an accepted k+1 whenever exactly one foreign message got in
between (the numbers line up again), leaving a gap the retry would then drop as a
duplicate: a lost message. A message id only matches its own message. But the server
keeps the last message id in memory only, rebuilt after a restart from the duplicate
window: the first link, whose predecessor may be old, uses the sequence number instead.

Limits: the check is per stream, so messages of one batch to different topics are ordered
per topic only; ids must be unique per topic, as the port already asks (two different
messages with one id would pass for each other in a chain, and JetStream drops the second
within its window); a publisher that keeps losing the race for ``_MAX_ROUNDS`` rounds gets
a BrokerError; unsequenced publishes racing a sequenced batch cut its chain (it is retried);
after its own unsequenced publish to a topic this process reads the head again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import nats.js.errors

from obelisk.errors import BrokerError, BrokerUnavailable
from obelisk.messaging._nats_names import (
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    MSG_ID,
    SEQUENCE,
    subject_of,
)
from obelisk.messaging._nats_pipeline import (
    WRONG_LAST_MSG_ID,
    WRONG_LAST_SEQUENCE,
    Outgoing,
    Pipeline,
    Reply,
    check,
)
from obelisk.messaging.broker import Published
from obelisk.messaging.message import Message

__all__ = ["Publisher"]

_MAX_ROUNDS: Final = 20
_MAX_SEQUENCE: Final = 2**63  # JetStream and Go read header numbers as int64
_LOOKBACK: Final = (1, 16, 128)  # window sizes when looking for the last sequenced message
_encode = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True)
class _Head:
    """The end of a topic's stream as this process knows it."""

    stream_seq: int  # the stream's last sequence number (0: empty)
    sequence: int  # the last published obelisk sequence (-1: none)


class Publisher:
    """Publishes for one NatsBroker.

    Args:
        pipeline: the connection's request pipeline.
        js: the nats-py JetStream context (for the head lookups).
        prefix: the broker's stream prefix.
        ensure_stream: creates a topic's stream if needed and returns its name.
        forget_stream: called when a stream turned out to be missing.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        js: Any,
        prefix: str,
        ensure_stream: Callable[[str], Awaitable[str]],
        forget_stream: Callable[[str], None],
    ) -> None:
        self._pipeline = pipeline
        self._js = js
        self._prefix = prefix
        self._ensure_stream = ensure_stream
        self._forget_stream = forget_stream
        self._heads: dict[str, _Head] = {}
        # Sequenced batches of this process go one at a time: they would only make each
        # other's chains fail. (Other processes are handled by the chain itself.)
        self._sequenced = asyncio.Lock()

    def forget(self, topic: str) -> None:
        """Drop what is known of ``topic``'s head (read it again before the next batch)."""
        self._heads.pop(topic, None)

    def _outgoing(self, message: Message, headers: dict[str, str] | None) -> Outgoing:
        subject = subject_of(self._prefix, message.topic, message.subject)
        return Outgoing(subject, _encode(message), headers)

    def _check(self, reply: Reply, topic: str) -> None:
        if reply.error is not None and reply.error.code == 503:
            self._forget_stream(topic)  # deleted behind our back, or JetStream restarting
        check(reply, f"a publish to {topic!r}")

    # -- unsequenced ------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> Published:
        """Publish ``messages`` in order; JetStream drops ids seen in its duplicate window."""
        for topic in {message.topic for message in messages}:
            await self._ensure_stream(topic)
            self._heads.pop(topic, None)  # the stream moves on without a sequence
        items = [self._outgoing(m, {MSG_ID: m.id} if m.id.strip() else None) for m in messages]
        replies = await self._pipeline.send(items)
        new = 0
        for message, reply in zip(messages, replies, strict=True):
            self._check(reply, message.topic)
            new += not reply.duplicate
        return Published(new, len(messages) - new)

    # -- sequenced --------------------------------------------------------------------------

    async def publish_sequenced(
        self, messages: Sequence[Message], sequences: Sequence[int]
    ) -> Published:
        """Publish the messages whose sequence is above their topic's last one."""
        pending: dict[str, list[tuple[Message, int]]] = {}
        for message, sequence in zip(messages, sequences, strict=True):
            if not 0 <= sequence < _MAX_SEQUENCE:
                raise BrokerError(f"sequence {sequence} is outside 0..2**63")
            pending.setdefault(message.topic, []).append((message, sequence))
        new = duplicates = 0
        async with self._sequenced:
            for _ in range(_MAX_ROUNDS):
                if not pending:
                    return Published(new, duplicates)
                await self._learn_heads(list(pending))
                plan, items, dropped = self._chain(pending)
                duplicates += dropped
                try:
                    replies = await self._pipeline.send(items)
                except BrokerUnavailable:
                    for topic in pending:
                        self._heads.pop(topic, None)
                    raise
                stored, dropped, pending = self._settle(plan, replies)
                new += stored
                duplicates += dropped
        raise BrokerError(
            f"nats: gave up publishing to {sorted(pending)} after {_MAX_ROUNDS} rounds: "
            "other publishers kept writing to them"
        )

    def _chain(
        self, pending: dict[str, list[tuple[Message, int]]]
    ) -> tuple[list[tuple[Message, int]], list[Outgoing], int]:
        plan: list[tuple[Message, int]] = []
        items: list[Outgoing] = []
        dropped = 0
        for topic, entries in pending.items():
            head = self._heads[topic]
            last = head.sequence
            previous: str | None = None
            for message, sequence in entries:
                if sequence <= last:
                    dropped += 1
                    continue
                last = sequence
                # A blank id cannot link a chain (NATS ignores an empty header): use one the
                # sequence makes unique, which also de-duplicates a re-sent copy.
                ident = message.id.strip() or f"obelisk-sequence-{sequence}"
                headers = {MSG_ID: ident, SEQUENCE: str(sequence)}
                if previous is None:
                    headers[EXPECTED_LAST_SEQUENCE] = str(head.stream_seq)
                else:
                    headers[EXPECTED_LAST_MSG_ID] = previous
                previous = ident
                plan.append((message, sequence))
                items.append(self._outgoing(message, headers))
        return plan, items, dropped

    def _settle(
        self, plan: list[tuple[Message, int]], replies: list[Reply]
    ) -> tuple[int, int, dict[str, list[tuple[Message, int]]]]:
        stored = dropped = 0
        retry: dict[str, list[tuple[Message, int]]] = {}
        clean: dict[str, bool] = {}
        heads: dict[str, _Head] = {}
        for (message, sequence), reply in zip(plan, replies, strict=True):
            topic = message.topic
            error = reply.error
            if error is None and not reply.duplicate:
                stored += 1
                heads[topic] = _Head(reply.seq, sequence)
                clean.setdefault(topic, True)
            elif error is None:  # the same id stored within the duplicate window
                dropped += 1
                clean[topic] = False
            elif error.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID):
                retry.setdefault(topic, []).append((message, sequence))
                clean[topic] = False
            else:
                for name in clean:
                    self._heads.pop(name, None)
                self._check(reply, topic)
        for topic, ok in clean.items():
            # A chain stored whole ends at its last message; after anything else (a
            # refusal, a duplicate), read the head again rather than guess it.
            if ok and topic in heads:
                self._heads[topic] = heads[topic]
            else:
                self._heads.pop(topic, None)
        return stored, dropped, retry

    # -- the head of a stream ---------------------------------------------------------------

    async def _learn_heads(self, topics: list[str]) -> None:
        unknown = [topic for topic in topics if topic not in self._heads]
        heads = await asyncio.gather(*(self._read_head(topic) for topic in unknown))
        self._heads.update(zip(unknown, heads, strict=True))

    async def _read_head(self, topic: str) -> _Head:
        stream = await self._ensure_stream(topic)
        try:
            state = (await self._js.stream_info(stream)).state
        except nats.js.errors.NotFoundError:
            self._forget_stream(topic)
            stream = await self._ensure_stream(topic)
            state = (await self._js.stream_info(stream)).state
        last, first = int(state.last_seq), max(1, int(state.first_seq))
        seq, windows = last, iter(_LOOKBACK)
        while seq >= first:
            size = next(windows, _LOOKBACK[-1])
            window = range(seq, max(first, seq - size + 1) - 1, -1)
            found = await asyncio.gather(*(self._sequence_at(stream, s) for s in window))
            for sequence in found:
                if sequence is not None:
                    return _Head(last, sequence)
            seq = window[-1] - 1
        return _Head(last, -1)

    async def _sequence_at(self, stream: str, seq: int) -> int | None:
        try:
            raw = await self._js.get_msg(stream, seq=seq, direct=True)
        except nats.js.errors.NotFoundError:  # deleted
            return None
        value = (raw.headers or {}).get(SEQUENCE)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None
