"""The outbox relay, message workers and the inbox, on the memory broker and real servers.

Relay tests publish a bank log from a SQLite store and read the topic back; worker tests
publish plain messages and watch the handlers. Waits are bounded (``until``); nothing
asserts how fast anything was — a handler that must overlap another waits for it instead.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from obelisk.application import Application
from obelisk.demo.bank import (
    Account,
    AccountOpened,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.messaging import message as headers
from obelisk.messaging.broker import Broker
from obelisk.messaging.inbox import Inbox
from obelisk.messaging.message import Message
from obelisk.messaging.redis import RedisBroker
from obelisk.messaging.relay import OutboxRelay
from obelisk.messaging.worker import (
    ATTEMPTS,
    ERROR,
    ORIGINAL_TOPIC,
    REPLAYED_FROM,
    Backoff,
    MessageContext,
    MessageWorker,
    replay_dead_letters,
)
from obelisk.observability import Observer
from obelisk.observability.tracing import obelisk_tracer
from obelisk.projections import ReadStore, partition_of, read_store_from_url
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.store import SQLiteEventStore

from ._messaging_helpers import (
    ALL_KINDS,
    WAIT,
    LostAcks,
    Names,
    deposit,
    message,
    open_accounts,
    read_topic,
    stop_worker,
    until,
    whole_log,
)
from ._messaging_helpers import fixture_broker as fixture_broker  # fixtures: pytest finds
from ._messaging_helpers import fixture_names as fixture_names  # them by their names

FAST = Backoff(base=0.01, factor=2.0, maximum=0.05, jitter=0.0)
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")  # W3C trace context


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteEventStore, ReadStore]]:
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        SQLiteReadStore(tmp_path / "read.db") as read_store,
    ):
        yield store, read_store


def start(worker: MessageWorker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


# -- the relay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_the_relay_publishes_every_event_once_in_position_order_with_subject_key_and_headers(
    broker: Broker, names: Names, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = register_bank_handlers(
        Application(
            f"sqlite:///{tmp_path / 'events.db'}",
            observer=Observer(tracer=obelisk_tracer(provider)),
        )
    )
    async with app, SQLiteReadStore(tmp_path / "read.db") as read_store:
        # Traced commands, with and without a correlation id; an untraced unit of work with
        # both ids; plain appends with neither.
        await app.handle(OpenAccount(account_id="acc-0", owner="ada"), correlation_id="corr-0")
        await app.handle(OpenAccount(account_id="acc-1", owner="bob"))
        async with app.unit_of_work(correlation_id="corr-1", causation_id="cause-1") as uow:
            account = await uow.get(Account, "acc-1")
            account.deposit(5)
            account.deposit(6)
        await open_accounts(app.store, [f"acc-{n}" for n in range(2, 8)])
        await deposit(app.store, {f"acc-{n}": n for n in range(8)})

        relay = OutboxRelay(app.store, read_store, broker, topic=names.topic, page_size=7)
        assert await relay.run_until_caught_up() == 18
        log = await whole_log(app.store)
        published = await read_topic(broker, names.topic)

        assert [int(m.headers[headers.POSITION]) for m in published] == list(range(1, 19))
        assert relay.published == 18 and relay.duplicates == 0
        for msg, stored in zip(published, log, strict=True):
            expected = {
                headers.EVENT_TYPE: stored.event.event_type,
                headers.SCHEMA_VERSION: "1",
                headers.POSITION: str(stored.position),
                headers.STREAM_ID: stored.stream_id,
                headers.STREAM_VERSION: str(stored.version),
                headers.RECORDED_AT: repr(stored.recorded_at),
            }
            if stored.correlation_id is not None:
                expected[headers.CORRELATION_ID] = stored.correlation_id
            if stored.causation_id is not None:
                expected[headers.CAUSATION_ID] = stored.causation_id
            if stored.trace_context is not None:
                expected[headers.TRACEPARENT] = stored.trace_context
            assert msg.headers == expected
            assert msg.id == stored.event_id.hex
            assert msg.topic == names.topic
            assert msg.subject == f"Account.{stored.event.event_type}"
            assert msg.key == stored.stream_id
            assert app.store.codec.encode(stored.event) == msg.payload

        by_stream = {m.key: m for m in published if m.headers[headers.STREAM_VERSION] == "1"}
        assert by_stream["acc-0"].headers[headers.CORRELATION_ID] == "corr-0"
        assert headers.CAUSATION_ID not in by_stream["acc-0"].headers
        deposited = [m for m in published if m.key == "acc-1"][1:3]
        assert [(m.headers[headers.CORRELATION_ID], m.headers[headers.CAUSATION_ID])
                for m in deposited] == [("corr-1", "cause-1")] * 2  # fmt: skip
        assert headers.TRACEPARENT not in deposited[0].headers  # no command span around it
        spans = {s.context.trace_id for s in exporter.get_finished_spans()}
        for stream_id in ("acc-0", "acc-1"):
            traced = by_stream[stream_id].headers[headers.TRACEPARENT]
            assert TRACEPARENT.match(traced)
            assert int(traced.split("-")[1], 16) in spans  # the command's own trace
        assert headers.CORRELATION_ID not in by_stream["acc-2"].headers
        assert headers.TRACEPARENT not in by_stream["acc-2"].headers

        # Caught up: another pass publishes nothing.
        assert await relay.run_until_caught_up() == 18
        assert await broker.length(names.topic) == 18


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_relay_with_a_types_filter_publishes_only_events_of_those_types(
    broker: Broker, names: Names, stores: tuple[SQLiteEventStore, ReadStore]
) -> None:
    store, read_store = stores
    await open_accounts(store, ["a", "b", "c"])
    await deposit(store, {"a": 1, "b": 2, "c": 3})
    await open_accounts(store, ["d"])
    await deposit(store, {"a": 4, "d": 5})
    relay = OutboxRelay(
        store, read_store, broker, topic=names.topic, types=["bank.MoneyDeposited"], page_size=3
    )
    assert await relay.run_until_caught_up() == 9  # the checkpoint passes skipped events
    published = await read_topic(broker, names.topic)
    expected = [e for e in await whole_log(store) if isinstance(e.event, MoneyDeposited)]
    assert [m.headers[headers.POSITION] for m in published] == [str(e.position) for e in expected]
    assert {m.headers[headers.EVENT_TYPE] for m in published} == {"bank.MoneyDeposited"}
    assert relay.published == 5


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_partitioned_relay_spreads_streams_over_partition_topics_one_stream_in_one(
    broker: Broker, names: Names, stores: tuple[SQLiteEventStore, ReadStore]
) -> None:
    store, read_store = stores
    accounts = [f"acc-{n}" for n in range(40)]
    await open_accounts(store, accounts)
    for round_ in range(3):
        await deposit(store, {a: round_ + 1 for a in accounts})
    relay = OutboxRelay(store, read_store, broker, topic=names.topic, partitions=4, page_size=50)
    await relay.run_until_caught_up()

    log = await whole_log(store)
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)  # stream -> (partition, version)
    positions: list[int] = []
    for p in range(4):
        topic = f"{names.topic}.p{p}"
        published = await read_topic(broker, topic)
        assert published, f"partition {p} got nothing"
        in_partition = [int(m.headers[headers.POSITION]) for m in published]
        assert in_partition == sorted(in_partition)  # position order within a partition
        positions.extend(in_partition)
        for m in published:
            assert m.topic == topic
            seen[m.key].append((p, int(m.headers[headers.STREAM_VERSION])))
    assert sorted(positions) == [e.position for e in log]  # every event once, over all
    for account in accounts:
        assert {p for p, _ in seen[account]} == {partition_of(account, 4)}
        assert [v for _, v in seen[account]] == [1, 2, 3, 4]  # the stream's order kept
    assert await broker.length(names.topic) == 0  # nothing on the unpartitioned topic


# -- workers: order, concurrency -------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_messages_of_one_key_are_handled_strictly_in_order_while_different_keys_overlap(
    broker: Broker, names: Names
) -> None:
    keys = [f"k{n}" for n in range(8)]
    await broker.publish([message(names, key, n) for n in range(12) for key in keys])
    rng = random.Random()
    handled: dict[str, list[int]] = defaultdict(list)
    active: Counter[str] = Counter()
    same_key_overlaps: list[str] = []
    other_key_started = asyncio.Event()
    overlapped: list[bool] = []

    async def handle(ctx: MessageContext) -> None:
        key, n = ctx.message.key, int(ctx.message.payload)
        active[key] += 1
        if active[key] > 1:
            same_key_overlaps.append(f"{key} #{n}")
        if key != "k0":
            other_key_started.set()
        if (key, n) == ("k0", 0):
            # Waits for another key's handler to start: only a worker that runs different
            # keys at once gets past here before the bound.
            try:
                await asyncio.wait_for(other_key_started.wait(), WAIT / 3)
                overlapped.append(active["k0"] == 1 and sum(1 for v in active.values() if v) > 1)
            except TimeoutError:
                overlapped.append(False)
        await asyncio.sleep(rng.uniform(0, 0.004))
        handled[key].append(n)
        active[key] -= 1

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           concurrency=16, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.handled == 96, "96 messages handled")
    await stop_worker(worker, task)
    assert {key: handled[key] for key in keys} == {key: list(range(12)) for key in keys}
    assert same_key_overlaps == []
    assert overlapped == [True]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_no_more_than_concurrency_handlers_run_at_once(broker: Broker, names: Names) -> None:
    await broker.publish([message(names, f"k{n}", n) for n in range(30)])
    rng = random.Random()
    active = peak = 0

    async def handle(ctx: MessageContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(rng.uniform(0.001, 0.005))
        active -= 1

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           concurrency=3, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.handled == 30, "30 messages handled")
    await stop_worker(worker, task)
    assert peak == 3  # reached (12 keys wait after each fetch), never passed


# -- workers: failures -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_failing_message_is_retried_with_backoff_then_dead_lettered_while_others_flow(
    broker: Broker, names: Names
) -> None:
    bad = message(names, "bad", 0)
    good = [message(names, f"good-{n}", n) for n in range(20)]
    await broker.publish([bad, *good])
    calls: list[float] = []
    good_handled: set[str] = set()
    all_good = asyncio.Event()
    good_when_given_up: list[int] = []

    async def handle(ctx: MessageContext) -> None:
        if ctx.message.key != "bad":
            good_handled.add(ctx.message.id)
            if len(good_handled) == 20:
                all_good.set()
            return
        calls.append(time.monotonic())
        if len(calls) == 3:
            # The last attempt waits for the other keys: they must not wait for this one.
            try:
                await asyncio.wait_for(all_good.wait(), WAIT / 3)
            finally:
                good_when_given_up.append(len(good_handled))
        raise ValueError(f"card declined for {ctx.message.id}")

    backoff = Backoff(base=0.05, factor=2.0, maximum=1.0, jitter=0.0)
    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=3, backoff=backoff, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.dead_lettered == 1, "the dead letter")
    await until(lambda: worker.handled == 20, "the good messages handled")
    await stop_worker(worker, task)

    assert len(calls) == 3 and worker.retries == 2
    # Backed off: asyncio.sleep never returns early (a lower bound only; 5% for the clock).
    assert calls[1] - calls[0] >= 0.05 * 0.95 and calls[2] - calls[1] >= 0.1 * 0.95
    assert good_when_given_up == [20]
    [letter] = await read_topic(broker, names.dlq())
    assert (letter.id, letter.key, letter.payload) == (bad.id, bad.key, bad.payload)
    assert letter.headers[ERROR] == f"ValueError: card declined for {bad.id}"
    assert letter.headers[ATTEMPTS] == "3"
    assert letter.headers[ORIGINAL_TOPIC] == names.topic
    assert await broker.pending(names.topic, names.group) == 0  # the dead letter is acked


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_handler_sees_the_attempt_number_of_each_retry(
    broker: Broker, names: Names
) -> None:
    await broker.publish([message(names, "k", 0)])
    attempts: list[int] = []

    async def handle(ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=3, backoff=FAST, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.handled == 1, "the message handled")
    await stop_worker(worker, task)
    assert attempts == [1, 2, 3]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_poison_message_holds_back_its_keys_later_messages_which_then_continue(
    broker: Broker, names: Names
) -> None:
    await broker.publish([message(names, "k", n) for n in range(4)])
    calls: list[int] = []

    async def handle(ctx: MessageContext) -> None:
        n = int(ctx.message.payload)
        calls.append(n)
        if n == 1:
            raise RuntimeError("poison")

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=3, backoff=FAST, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.handled == 3, "the other three handled")
    await stop_worker(worker, task)
    assert calls == [0, 1, 1, 1, 2, 3]
    assert worker.dead_lettered == 1
    assert [int(m.payload) for m in await read_topic(broker, names.dlq())] == [1]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_replayed_dead_letters_are_handled_by_the_fixed_handler(
    broker: Broker, names: Names
) -> None:
    failing = [message(names, "x", 0), message(names, "x", 1), message(names, "y", 2)]
    await broker.publish([*failing, message(names, "z", 3)])
    broken = True
    handled: list[Message] = []

    async def handle(ctx: MessageContext) -> None:
        if broken and ctx.message.key != "z":
            raise RuntimeError("bug in the handler")
        handled.append(ctx.message)

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=1, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.dead_lettered == 3 and worker.handled == 1, "3 dead letters")
    broken = False  # the fix is deployed

    count, cursor = await replay_dead_letters(broker, names.group)
    assert count == 3 and cursor is not None
    await until(lambda: worker.handled == 4, "the replayed messages handled", WAIT / 3)
    await stop_worker(worker, task)

    replayed = handled[1:]
    # Each under an id of its own (brokers that de-duplicate by id would drop the
    # original's), naming the message it repeats.
    assert sorted(m.headers[REPLAYED_FROM] for m in replayed) == sorted(m.id for m in failing)
    assert not {m.id for m in replayed} & {m.id for m in failing}
    assert [int(m.payload) for m in replayed if m.key == "x"] == [0, 1]  # in order again
    for m in replayed:
        assert m.topic == names.topic
        assert not {ERROR, ATTEMPTS, ORIGINAL_TOPIC} & set(m.headers)
    assert await broker.length(names.dlq()) == 3  # the dead letters stay where they are
    assert await replay_dead_letters(broker, names.group, after=cursor) == (0, cursor)
    assert await broker.pending(names.topic, names.group) == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_replayed_message_that_fails_again_is_dead_lettered_again(
    broker: Broker, names: Names
) -> None:
    sent = message(names, "x", 0)
    await broker.publish([sent])
    calls: list[str] = []

    async def handle(ctx: MessageContext) -> None:
        calls.append(ctx.message.id)
        raise RuntimeError("still broken")

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=1, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    try:
        await until(lambda: worker.dead_lettered == 1, "the dead letter")
        assert (await replay_dead_letters(broker, names.group))[0] == 1
        await until(lambda: len(calls) == 2, "the replayed message handled", WAIT / 3)
        await until(lambda: worker.dead_lettered == 2, "the second dead letter", WAIT / 3)
    finally:
        await stop_worker(worker, task)
    first, again = await read_topic(broker, names.dlq())
    assert first.id == sent.id and again.headers[REPLAYED_FROM] == sent.id
    assert await broker.pending(names.topic, names.group) == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_an_event_message_that_does_not_decode_is_dead_lettered_at_once_as_malformed(
    broker: Broker, names: Names
) -> None:
    broken = message(names, "k", 0, **{headers.EVENT_TYPE: "bank.MoneyDeposited"})
    broken = Message(broken.id, broken.topic, "Account.bank.MoneyDeposited", "k", b"{not json",
                     broken.headers)  # fmt: skip
    await broker.publish([broken, message(names, "k", 1)])
    seen: list[bytes] = []

    async def handle(ctx: MessageContext) -> None:
        seen.append(ctx.message.payload)

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           max_attempts=5, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: worker.dead_lettered == 1 and worker.handled == 1, "both messages")
    await stop_worker(worker, task)
    assert seen == [b"1"] and worker.retries == 0  # not retried: retrying cannot fix it
    [letter] = await read_topic(broker, names.dlq())
    assert letter.id == broken.id
    assert letter.headers[ERROR].startswith("malformed: ")
    assert letter.headers[ATTEMPTS] == "1"


async def test_a_foreign_entry_in_a_redis_stream_is_dead_lettered_with_the_reason(
    redis_url: str, names: Names, loop_errors: list[object]
) -> None:
    async with RedisBroker(redis_url, prefix=f"{names.group}:") as broker:
        await broker.create_group(names.topic, names.group)
        # Written by something that is not obelisk: `XADD <stream> * foo bar`.
        await broker.client.xadd(f"{names.group}:{names.topic}", {"foo": "bar"})
        after = message(names, "k", 1)
        await broker.publish([after])
        seen: list[str] = []

        async def handle(ctx: MessageContext) -> None:
            seen.append(ctx.message.id)

        worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                               fetch_wait=0.1)  # fmt: skip
        task = start(worker)
        await until(lambda: worker.dead_lettered == 1 and worker.handled == 1, "both entries")
        await stop_worker(worker, task)
        assert seen == [after.id]  # the worker kept going
        [letter] = await read_topic(broker, names.dlq())
        assert letter.headers[ERROR] == "malformed: not an obelisk message: fields ['foo']"
        assert letter.payload == b'{"foo":"bar"}'
        assert await broker.pending(names.topic, names.group) == 0


# -- workers: stopping and dying ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_graceful_stop_finishes_the_handlers_in_flight_and_acknowledges_them(
    broker: Broker, names: Names
) -> None:
    await broker.publish([message(names, f"k{n}", n) for n in range(4)])
    gate = asyncio.Event()
    started: list[str] = []
    finished: list[str] = []

    async def handle(ctx: MessageContext) -> None:
        started.append(ctx.message.id)
        await asyncio.wait_for(gate.wait(), WAIT)
        finished.append(ctx.message.id)

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           concurrency=4, fetch_wait=0.1)  # fmt: skip
    task = start(worker)
    await until(lambda: len(started) == 4, "4 handlers in flight")
    worker.stop()
    await asyncio.sleep(0.2)
    assert not task.done()  # waits for its handlers
    gate.set()
    await asyncio.wait_for(task, WAIT)
    assert sorted(finished) == sorted(started) and worker.handled == 4
    assert await broker.pending(names.topic, names.group) == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_cancelled_worker_leaves_its_messages_to_another_consumer_after_the_ack_timeout(
    broker: Broker, names: Names
) -> None:
    await broker.publish([message(names, f"k{n}", n) for n in range(3)])
    release = asyncio.Event()
    first: list[str] = []

    async def stuck(ctx: MessageContext) -> None:
        first.append(ctx.message.id)
        await asyncio.wait_for(release.wait(), WAIT)
        raise RuntimeError("the process is gone: this result goes nowhere")

    dying = MessageWorker(broker, stuck, group=names.group, topic=names.topic,
                          ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
    dying_task = start(dying)
    await until(lambda: len(first) == 3, "3 handlers in flight")
    dying_task.cancel()
    try:
        done, _ = await asyncio.wait([dying_task], timeout=5.0)
        assert dying_task in done, "a cancelled worker waits for its handlers to finish"
    finally:
        release.set()  # whatever happened: no task outlives the test

    again: dict[str, int] = {}

    async def handle(ctx: MessageContext) -> None:
        again[ctx.message.id] = ctx.attempt

    other = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                          consumer="other", ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
    task = start(other)
    await until(lambda: len(again) == 3, "the 3 messages redelivered")
    await stop_worker(other, task)
    assert sorted(again) == sorted(first)
    assert all(attempt >= 2 for attempt in again.values()), again
    assert await broker.pending(names.topic, names.group) == 0
    await asyncio.gather(*dying._lane_tasks, return_exceptions=True)


# -- the inbox -----------------------------------------------------------------------------


async def test_the_inbox_lets_a_message_through_once_and_reports_it_handled(
    stores: tuple[SQLiteEventStore, ReadStore], loop_errors: list[object]
) -> None:
    _, read_store = stores
    inbox = Inbox(read_store)
    async with read_store.transaction() as tx:
        await tx.execute("CREATE TABLE effects (message_id TEXT PRIMARY KEY, times INTEGER)")
    for _ in range(2):  # the same message, delivered twice
        async with inbox.transaction("billing", "m-1") as tx:
            if tx is not None:
                await tx.execute(
                    "INSERT INTO effects VALUES (?, 1) "
                    "ON CONFLICT (message_id) DO UPDATE SET times = times + 1",
                    "m-1",
                )
    assert await read_store.query("SELECT message_id, times FROM effects") == [("m-1", 1)]
    assert await inbox.handled("billing", "m-1")
    assert not await inbox.handled("billing", "m-2")
    assert not await inbox.handled("shipping", "m-1")  # per consumer group

    # A handler that fails rolls its inbox record back with its effects: not handled.
    with pytest.raises(RuntimeError):
        async with inbox.transaction("billing", "m-3") as tx:
            assert tx is not None
            await tx.execute("INSERT INTO effects VALUES (?, 1)", "m-3")
            raise RuntimeError("handler failed")
    assert not await inbox.handled("billing", "m-3")
    assert await read_store.query("SELECT count(*) FROM effects") == [(1,)]


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_redelivered_message_whose_ack_was_lost_has_no_second_effect(
    broker: Broker, names: Names, stores: tuple[SQLiteEventStore, ReadStore]
) -> None:
    _, read_store = stores
    inbox = Inbox(read_store)
    async with read_store.transaction() as tx:
        await tx.execute("CREATE TABLE effects (message_id TEXT PRIMARY KEY, times INTEGER)")
    sent = [message(names, f"k{n}", n) for n in range(3)]
    await broker.publish(sent)
    calls: list[str] = []

    async def handle(ctx: MessageContext) -> None:
        calls.append(ctx.message.id)
        assert ctx.tx is not None
        await ctx.tx.execute(
            "INSERT INTO effects VALUES (?, 1) "
            "ON CONFLICT (message_id) DO UPDATE SET times = times + 1",
            ctx.message.id,
        )

    first = MessageWorker(LostAcks(broker), handle, group=names.group, topic=names.topic,
                          inbox=inbox, ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
    task = start(first)
    await until(lambda: first.handled == 3, "3 messages handled")
    await stop_worker(first, task)  # its acks are lost on the way

    second = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           inbox=inbox, ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
    task = start(second)
    await until(lambda: second.duplicates == 3, "3 redeliveries seen as duplicates")
    await stop_worker(second, task)
    assert sorted(calls) == sorted(m.id for m in sent)  # the handler ran once each
    assert second.handled == 0
    rows = await read_store.query("SELECT message_id, times FROM effects ORDER BY message_id")
    assert rows == sorted((m.id, 1) for m in sent)
    for m in sent:
        assert await inbox.handled(names.group, m.id)
    assert await broker.pending(names.topic, names.group) == 0  # acked the second time


# -- correlation and causation ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_command_issued_by_a_handler_carries_the_correlation_and_is_caused_by_the_message(
    broker: Broker, names: Names, tmp_path: Path
) -> None:
    app = register_bank_handlers(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    async with app, SQLiteReadStore(tmp_path / "read.db") as read_store:
        await app.handle(OpenAccount(account_id="a", owner="ada"), correlation_id="signup-7")
        await app.handle(OpenAccount(account_id="b", owner="bob"))  # starts no conversation
        relay = OutboxRelay(app.store, read_store, broker, topic=names.topic)
        await relay.run_until_caught_up()
        opened = {m.key: m for m in await read_topic(broker, names.topic)}

        async def welcome_bonus(ctx: MessageContext) -> None:
            if not isinstance(ctx.event, AccountOpened):
                return
            async with app.unit_of_work(
                correlation_id=ctx.correlation_id, causation_id=ctx.causation_id
            ) as uow:
                account = await uow.get(Account, ctx.message.key)
                account.deposit(10)

        worker = MessageWorker(broker, welcome_bonus, group=names.group, topic=names.topic,
                               fetch_wait=0.1)  # fmt: skip
        task = start(worker)
        await until(lambda: worker.handled == 2, "both openings handled")
        await stop_worker(worker, task)

        bonus = {e.stream_id: e for e in await whole_log(app.store)
                 if isinstance(e.event, MoneyDeposited)}  # fmt: skip
        assert bonus["a"].correlation_id == "signup-7"
        assert bonus["a"].causation_id == opened["a"].id
        # No correlation on the cause: the message that started the conversation names it.
        assert bonus["b"].correlation_id == opened["b"].id
        assert bonus["b"].causation_id == opened["b"].id

        # Relayed, the bonus carries both on.
        await relay.run_until_caught_up()
        relayed = {m.key: m for m in (await read_topic(broker, names.topic))[2:]}
        assert relayed["a"].headers[headers.CORRELATION_ID] == "signup-7"
        assert relayed["a"].headers[headers.CAUSATION_ID] == opened["a"].id


async def test_a_relay_started_past_a_streams_first_event_still_names_its_aggregate_type(
    tmp_path: Path,
) -> None:
    """Stores write the aggregate type on a stream's first event only; a relay that starts
    after it (restarted from a checkpoint) looks the type up instead of publishing
    ``unknown.<event type>``."""
    from obelisk.demo.bank import Deposit, OpenAccount, register_bank_handlers
    from obelisk.messaging.memory import MemoryBroker

    app = register_bank_handlers(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    broker = MemoryBroker()
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        await app.handle(OpenAccount(account_id="acc", owner="ada"))
        await OutboxRelay(app.store, read_store, broker).run_until_caught_up()
        await app.handle(Deposit(account_id="acc", amount=3))
        # A new relay object: what the first one saw is gone, as after a restart.
        await OutboxRelay(app.store, read_store, broker).run_until_caught_up()
    subjects = [entry.message.subject for entry in await broker.read("events")]
    assert subjects == ["Account.bank.AccountOpened", "Account.bank.MoneyDeposited"]
