"""Message workers: consume a topic in a group, handle each message once in effect.

* **Acknowledgement**: a message is acknowledged only after its handler succeeded (or it
  was dead-lettered). A worker that dies leaves its messages unacknowledged; the broker
  delivers them again after the group's ``ack_timeout``.
* **Per-key ordering**: messages with one key (a stream id) are handled one at a time, in
  order; different keys in parallel, at most ``concurrency`` handlers (or, with batched
  inbox transactions, ``concurrency`` batches) at once. Fetching pauses while ``4 x`` that
  many messages are waiting (backpressure).
* **Retries**: a failing handler is retried in place — its key's later messages wait —
  with exponential backoff and jitter, up to ``max_attempts``; then the message goes to
  the dead-letter topic (``dlq.<group>``) with the error, and is acknowledged.
* **Malformed messages** (not written by obelisk, or an event that does not decode) go to
  the dead-letter topic at once with the reason: retrying cannot fix them.
* **Idempotence**: with an :class:`~obelisk.messaging.inbox.Inbox`, the handler runs in a
  transaction that records the message id; a redelivered message is acknowledged without
  running the handler again.
* **Graceful stop**: :meth:`MessageWorker.stop` stops fetching; handlers in progress finish
  and are acknowledged before :meth:`run` returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from obelisk.errors import BrokerUnavailable, StoreError, ValidationError
from obelisk.messaging import message as headers
from obelisk.messaging.broker import Broker
from obelisk.messaging.message import MALFORMED, Delivery, Message, validate_topic
from obelisk.observability.histogram import LATENCY_BUCKETS, FastHistogram

LAG_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

if TYPE_CHECKING:
    from obelisk.domain.events import Event
    from obelisk.messaging.inbox import Inbox
    from obelisk.projections.readstore import ReadTransaction
    from obelisk.store.codec import EventCodec

__all__ = ["Backoff", "MessageContext", "MessageWorker"]

_log = logging.getLogger("obelisk.messaging.worker")

ERROR: Final = "obelisk-error"
ATTEMPTS: Final = "obelisk-attempts"
ORIGINAL_TOPIC: Final = "obelisk-original-topic"
FAILED_AT: Final = "obelisk-failed-at"
REPLAYED_FROM: Final = "obelisk-replayed-from"  # the id of the message a replay repeats


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (n = 1 after the first failure): ``base * factor**(n-1)``,
    capped at ``maximum``, times a random factor in ``[1 - jitter, 1]`` so that many
    workers failing together do not retry together."""

    base: float = 0.1
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        raw = min(self.maximum, self.base * self.factor ** max(0, attempt - 1))
        return raw * random.uniform(1.0 - self.jitter, 1.0)


class MessageContext:
    """What a handler gets: the message, its delivery, the decoded event (for relayed
    events), the inbox transaction (with an inbox) and the ids to pass on to commands."""

    __slots__ = ("delivery", "event", "tx")

    def __init__(self, delivery: Delivery, event: Event | None, tx: ReadTransaction | None):
        self.delivery = delivery
        self.event = event
        self.tx = tx

    @property
    def message(self) -> Message:
        return self.delivery.message

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    @property
    def correlation_id(self) -> str:
        """The conversation this message belongs to (its own id when it starts one)."""
        return self.message.headers.get(headers.CORRELATION_ID) or self.message.id

    @property
    def causation_id(self) -> str:
        """What a command issued by this handler is caused by: this message."""
        return self.message.id


Handler = Callable[[MessageContext], Awaitable[None]]


class _Malformed(Exception):
    pass


class MessageWorker:
    """Consumes ``topic`` as ``consumer`` of ``group``; see the module docstring.

    Args:
        broker: the broker.
        handler: ``async def handler(ctx: MessageContext) -> None``.
        group: the consumer group (each group gets every message once).
        topic: the topic to consume.
        concurrency: handlers running at once (different keys).
        max_attempts: deliveries before a message is dead-lettered.
        backoff: delays between attempts (keep them well under ``ack_timeout``).
        inbox: record handled ids in the handler's transaction (exactly-once effect).
        codec: decodes relayed events into ``ctx.event`` (default: the JSON codec).
        ack_timeout: after this long unacknowledged, the broker redelivers a message.
        tracer: an OpenTelemetry tracer: a span per handled message, linked to the traced
            command that wrote its event (the relay carries ``traceparent`` in a header).
        before_handle: awaited before each attempt, outside the inbox's transaction.
        on_dead_letter: awaited with the delivery and the error when a message is
            dead-lettered (after it is published to the dead-letter topic).
        batch_size: with an inbox, up to this many messages (of different keys) are
            handled in one transaction: one inbox statement and one commit for all of
            them (measured 2-3x the messages/s of a transaction each on PostgreSQL). A
            failure rolls the batch back and its messages are handled one by one. 1: a
            transaction per message (also the case with a tracer or ``before_handle``).
    """

    def __init__(
        self,
        broker: Broker,
        handler: Handler,
        *,
        group: str,
        topic: str = "events",
        consumer: str | None = None,
        concurrency: int = 16,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        inbox: Inbox | None = None,
        codec: EventCodec | None = None,
        ack_timeout: float = 30.0,
        fetch_wait: float = 0.5,
        tracer: Any = None,
        before_handle: Callable[[Delivery], Awaitable[None]] | None = None,
        on_dead_letter: Callable[[Delivery, str], Awaitable[None]] | None = None,
        batch_size: int = 16,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValidationError("concurrency and max_attempts must be >= 1")
        validate_topic(topic)
        validate_topic(group)
        if codec is None:
            from obelisk.store.codec import JsonCodec

            codec = JsonCodec()
        self.broker = broker
        self.handler = handler
        self.group = group
        self.topic = topic
        self.consumer = consumer or f"{group}-{uuid.uuid4().hex[:8]}"
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.inbox = inbox
        self.codec = codec
        self.ack_timeout = ack_timeout
        self.fetch_wait = fetch_wait
        self.tracer = tracer
        self.before_handle = before_handle
        self.on_dead_letter = on_dead_letter
        self.dead_letter_topic = f"dlq.{group}"
        self.handled = 0
        self.retries = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self.errors = 0
        self.handler_seconds = FastHistogram(LATENCY_BUCKETS)
        # From an event's commit to its handler's start (relayed events carry the time).
        self.lag_seconds = FastHistogram(LAG_BUCKETS)
        self.last_lag = 0.0
        self._batcher: _Batcher | None = None
        if inbox is not None and batch_size > 1 and tracer is None and before_handle is None:
            self._batcher = _Batcher(self, inbox, batch_size, parallel=concurrency)
            # Lanes wait for their batch: enough of them to fill batches.
            self._lane_limit = concurrency * batch_size
        else:
            self._lane_limit = concurrency
        self._semaphore = asyncio.Semaphore(self._lane_limit)
        self._one_by_one = asyncio.Semaphore(concurrency)
        self._lanes: dict[str, deque[Delivery]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._room = asyncio.Event()
        self._acks: list[Delivery] = []
        self._stopping = False
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Stop fetching; :meth:`run` returns once handlers in progress have finished."""
        self._stopping = True
        self._wake.set()
        self._room.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`. Broker outages are retried with backoff."""
        limit = 4 * self._lane_limit
        outage = 0.05
        created = False
        try:
            while not self._stopping:
                if self._waiting >= limit:
                    self._room.clear()
                    try:
                        await self._flush_acks()
                    except BrokerUnavailable:
                        pass  # the acks stay queued for the next flush
                    await self._room.wait()
                    continue
                try:
                    if not created:
                        await self.broker.create_group(self.topic, self.group)
                        created = True
                    await self._flush_acks()
                    deliveries = await self.broker.consume(
                        self.topic,
                        self.group,
                        self.consumer,
                        max_messages=limit - self._waiting,
                        wait=self.fetch_wait,
                        ack_timeout=self.ack_timeout,
                    )
                except BrokerUnavailable as exc:
                    self.errors += 1
                    _log.warning("worker %s: %s; retrying in %.2fs", self.consumer, exc, outage)
                    await self._pause(outage)
                    outage = min(outage * 2, 5.0)
                    continue
                outage = 0.05
                for delivery in deliveries:
                    self._enqueue(delivery)
        except asyncio.CancelledError:
            # Cancelled is not stopped: end now, as a process that dies would. Handlers in
            # flight are cancelled (an inbox transaction rolls back) and their messages stay
            # unacknowledged: the broker delivers them again after ack_timeout. Waiting for
            # them instead would let one stuck handler hold the cancellation forever.
            if self._batcher is not None:
                self._batcher.close()  # no new batch starts for lanes being cancelled
            while self._lane_tasks:
                tasks = list(self._lane_tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            # Graceful: what was taken is finished and acknowledged.
            if self._lane_tasks:
                await asyncio.gather(*self._lane_tasks, return_exceptions=True)
            try:
                await self._flush_acks()
            except BrokerUnavailable as exc:  # redelivered later; the inbox absorbs it
                _log.warning("worker %s: final acks lost: %s", self.consumer, exc)

    async def _pause(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _enqueue(self, delivery: Delivery) -> None:
        self._waiting += 1
        key = delivery.message.key
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(delivery)  # its key's runner takes it in order
            return
        lane = self._lanes[key] = deque([delivery])
        task = asyncio.create_task(self._run_lane(key, lane))
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _run_lane(self, key: str, lane: deque[Delivery]) -> None:
        try:
            while lane:
                delivery = lane[0]
                try:
                    async with self._semaphore:
                        await self._process(delivery)
                except Exception as exc:
                    # A dead letter that could not be published while stopping, a failing
                    # on_dead_letter hook: the message stays unacknowledged and comes back
                    # after ack_timeout, and so do the key's later messages, dropped here.
                    # Left to escape, the error would end this lane with its messages still
                    # counted as waiting: enough of those and fetching stops for good.
                    self.errors += 1
                    _log.warning("worker %s: message %s left for redelivery: %s",
                                 self.consumer, delivery.message.id, exc)  # fmt: skip
                    self._waiting -= len(lane)
                    lane.clear()
                    self._room.set()
                    return
                lane.popleft()
                self._waiting -= 1
                self._room.set()
        finally:
            del self._lanes[key]

    async def _process(self, delivery: Delivery) -> None:
        message = delivery.message
        reason = message.headers.get(MALFORMED)
        event = None
        if reason is None:
            try:
                event = self._decode(message)
            except _Malformed as exc:
                reason = str(exc)
        if reason is not None:
            await self._dead_letter(delivery, f"malformed: {reason}", delivery.attempt)
            return
        if self._batcher is not None:
            if await self._batcher.submit(delivery, event):
                await self._acknowledge(delivery)
                return
            # One by one, at most `concurrency` at once (the lanes' limit is for batching).
            async with self._one_by_one:
                await self._one_at_a_time(delivery, event)
            return
        await self._one_at_a_time(delivery, event)

    async def _one_at_a_time(self, delivery: Delivery, event: Event | None) -> None:
        message = delivery.message
        attempt = delivery.attempt
        current = delivery
        while True:
            try:
                await self._handle(current, event)
                break
            except Exception as exc:
                if attempt >= self.max_attempts:
                    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    await self._dead_letter(delivery, error, attempt)
                    return
                self.retries += 1
                delay = self.backoff.delay(attempt)
                _log.info(
                    "worker %s: message %s attempt %d failed (%s); retry in %.2fs",
                    self.consumer, message.id, attempt, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1
                # The handler (and its span) see which attempt this is, as a dead letter does.
                current = Delivery(message, attempt, delivery.handle)
        await self._acknowledge(delivery)

    async def _acknowledge(self, delivery: Delivery) -> None:
        self._acks.append(delivery)
        if len(self._acks) >= 256:
            try:
                await self._flush_acks()
            except BrokerUnavailable:
                pass  # kept for the fetch loop's next flush; this message was handled

    def _decode(self, message: Message) -> Event | None:
        type_name = message.headers.get(headers.EVENT_TYPE)
        if type_name is None:
            return None  # not a relayed event (a job, a user's message): payload as is
        try:
            schema = int(message.headers.get(headers.SCHEMA_VERSION, "1"))
            position = int(message.headers.get(headers.POSITION, "0"))
            version = int(message.headers.get(headers.STREAM_VERSION, "0"))
            return self.codec.decode(
                type_name, schema, message.payload, message.key, version, position
            )
        except (ValueError, StoreError) as exc:
            raise _Malformed(str(exc)) from exc

    async def _handle(self, delivery: Delivery, event: Event | None) -> None:
        tracer = self.tracer
        if tracer is None:
            await self._handle_once(delivery, event)
            return
        from obelisk.observability.tracing import link_to

        message = delivery.message
        header = message.headers.get(headers.TRACEPARENT)
        attributes = {
            "obelisk.group": self.group,
            "obelisk.subject": message.subject,
            "obelisk.message_id": message.id,
            "obelisk.attempt": delivery.attempt,
        }
        # A link to the command that wrote the event (across processes, via the header).
        with tracer.start_as_current_span(
            f"obelisk.message {self.group}",
            links=link_to(header) if header else [],
            attributes=attributes,
        ):
            await self._handle_once(delivery, event)

    def _note_lag(self, message: Message) -> None:
        recorded = message.headers.get(headers.RECORDED_AT)
        if recorded is not None:
            try:
                lag = max(0.0, time.time() - float(recorded))
            except ValueError:
                return
            self.last_lag = lag
            self.lag_seconds.observe(lag)

    async def _handle_once(self, delivery: Delivery, event: Event | None) -> None:
        if self.before_handle is not None:
            await self.before_handle(delivery)
        self._note_lag(delivery.message)
        started = time.perf_counter()
        inbox = self.inbox
        if inbox is None:
            await self.handler(MessageContext(delivery, event, None))
        else:
            async with inbox.transaction(self.group, delivery.message.id) as tx:
                if tx is None:
                    self.duplicates += 1
                    return  # handled before: acknowledged, not run again
                await self.handler(MessageContext(delivery, event, tx))
        self.handled += 1
        self.handler_seconds.observe(time.perf_counter() - started)

    async def _dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        message = delivery.message
        letter = Message(
            message.id,
            self.dead_letter_topic,
            message.subject,
            message.key,
            message.payload,
            {
                **message.headers,
                ERROR: error[:2000],
                ATTEMPTS: str(attempts),
                ORIGINAL_TOPIC: message.topic,
                FAILED_AT: repr(time.time()),
            },
        )
        _log.error("worker %s dead-letters message %s: %s", self.consumer, message.id, error)
        # In place, until the broker is back: the key's later messages wait behind this one
        # as they wait behind its retries, so none overtakes it.
        pause = 0.05
        while True:
            try:
                await self.broker.publish([letter])
                break
            except BrokerUnavailable as exc:
                if self._stopping:
                    raise  # left unacknowledged: redelivered, and dead-lettered then
                self.errors += 1
                _log.warning("worker %s: dead letter not published (%s); again in %.2fs",
                             self.consumer, exc, pause)  # fmt: skip
                await self._pause(pause)
                pause = min(pause * 2, 5.0)
        self.dead_lettered += 1
        if self.on_dead_letter is not None:
            await self.on_dead_letter(delivery, error)
        self._acks.append(delivery)

    async def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            try:
                await self.broker.ack(self.topic, self.group, acks)
            except BrokerUnavailable:
                self._acks[:0] = acks  # try again with the next flush
                raise


class _Batcher:
    """Gathers the messages lanes submit into shared inbox transactions.

    Each lane submits only its head message, so per-key order holds. A batch commits its
    messages' inbox records and their handlers' writes together; if any handler raises,
    the whole batch rolls back and every message in it goes the one-at-a-time way (with
    its retries), so one poison message never fails its neighbours.
    """

    def __init__(self, worker: MessageWorker, inbox: Inbox, size: int, *, parallel: int):
        self.worker = worker
        self.inbox = inbox
        self.size = size
        self.parallel = parallel
        self.running = 0
        self._queue: list[tuple[Delivery, Event | None, asyncio.Future[bool]]] = []
        self._scheduled = False
        self._closed = False

    def close(self) -> None:
        """Start no more batches; queued submissions go the one-by-one way (or nowhere,
        when their lanes are cancelled)."""
        self._closed = True
        queued, self._queue = self._queue, []
        for _, _, future in queued:
            if not future.done():
                future.set_result(False)

    def submit(self, delivery: Delivery, event: Event | None) -> asyncio.Future[bool]:
        """A future: True when handled (or a duplicate) in a batch, False to go it alone."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((delivery, event, future))
        if not self._scheduled:
            # After this loop iteration: the other lanes' submissions join the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return future

    def _start(self) -> None:
        self._scheduled = False
        self._queue = [item for item in self._queue if not item[2].done()]
        while self._queue and self.running < self.parallel and not self._closed:
            batch, self._queue = self._queue[: self.size], self._queue[self.size :]
            self.running += 1
            task = asyncio.create_task(self._run(batch))
            self.worker._lane_tasks.add(task)
            task.add_done_callback(self.worker._lane_tasks.discard)

    async def _run(self, batch: list[tuple[Delivery, Event | None, asyncio.Future[bool]]]) -> None:
        worker = self.worker
        ok = False
        try:
            started = time.perf_counter()
            await self._transaction(batch)
            ok = True
            elapsed = (time.perf_counter() - started) / len(batch)
            for _ in batch:
                worker.handler_seconds.observe(elapsed)
        except Exception as exc:
            _log.info("worker %s: a batch failed (%s); its messages go one by one",
                      worker.consumer, exc)  # fmt: skip
        finally:
            self.running -= 1
            for _, _, future in batch:
                if not future.done():
                    future.set_result(ok)
            if self._queue:
                self._start()

    async def _transaction(
        self, batch: list[tuple[Delivery, Event | None, asyncio.Future[bool]]]
    ) -> None:
        worker = self.worker
        inbox = self.inbox
        await inbox.ensure()  # before the transaction: on SQLite it would wait for itself
        async with inbox.read_store.transaction() as tx:
            ids = [delivery.message.id for delivery, _, _ in batch]
            new = await inbox.record_many(tx, worker.group, ids)
            handled = duplicates = 0
            for delivery, event, _ in batch:
                worker._note_lag(delivery.message)
                if delivery.message.id in new:
                    new.discard(delivery.message.id)  # the same id twice: handled once
                    await worker.handler(MessageContext(delivery, event, tx))
                    handled += 1
                else:
                    duplicates += 1
        # Counted once committed: a batch that rolls back is handled again one by one.
        worker.handled += handled
        worker.duplicates += duplicates


async def replay_dead_letters(
    broker: Broker, group: str, *, after: str | None = None, limit: int = 1000
) -> tuple[int, str | None]:
    """Publish dead letters of ``group`` back to their original topics (error headers
    removed); returns how many and the cursor of the last one (pass it as ``after`` to
    continue). The dead letters stay where they are."""
    letters = await broker.read(f"dlq.{group}", after=after, limit=limit)
    replayed = []
    for entry in letters:
        message = entry.message
        original = message.headers.get(ORIGINAL_TOPIC)
        if original is None:
            continue
        kept = {
            k: v
            for k, v in message.headers.items()
            if k not in (ERROR, ATTEMPTS, ORIGINAL_TOPIC, FAILED_AT)
        }
        # A fresh id (one per dead letter: replaying it twice gives the same id): brokers
        # that de-duplicate by id (NATS, within its window) would drop the original's.
        kept[REPLAYED_FROM] = message.id
        replay_id = f"{message.id}.replay.{entry.cursor}"
        replayed.append(
            Message(replay_id, original, message.subject, message.key, message.payload, kept)
        )
    if replayed:
        await broker.publish(replayed)
    return len(replayed), (letters[-1].cursor if letters else after)


def describe(worker: MessageWorker) -> dict[str, Any]:
    """A worker's counters, for status output and metrics."""
    return {
        "group": worker.group,
        "consumer": worker.consumer,
        "handled": worker.handled,
        "retries": worker.retries,
        "dead_lettered": worker.dead_lettered,
        "duplicates": worker.duplicates,
        "waiting": worker._waiting,
    }
