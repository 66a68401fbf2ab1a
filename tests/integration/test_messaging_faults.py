"""Messaging under real faults: relays and workers killed with SIGKILL, brokers restarted.

Relays and workers that get killed run in ``_messaging_child.py`` processes; the test reads
the lines they print to kill them at a chosen step (mid-run, between a page's publish and
its checkpoint, with a handler in flight, after a commit whose ack never left). After every
fault the topic must hold each event exactly once, and a worker with an inbox must have
applied each exactly once: balances equal to an independent fold of the log.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest

from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.errors import BrokerUnavailable
from obelisk.messaging import message as headers
from obelisk.messaging.broker import Broker, Published
from obelisk.messaging.inbox import Inbox
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.message import Delivery, Message
from obelisk.messaging.relay import OutboxRelay
from obelisk.messaging.worker import ERROR, Backoff, MessageContext, MessageWorker
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.servers._process import ThrowawayProcess
from obelisk.servers.nats import ThrowawayNats
from obelisk.servers.redis import ThrowawayRedis
from obelisk.store import SQLiteEventStore

from ._messaging_child import EFFECT_SQL, EFFECTS_DDL
from ._messaging_helpers import (
    ALL_KINDS,
    SERVER_KINDS,
    WAIT,
    LostAcks,
    Names,
    deposit,
    fold_balances,
    message,
    new_broker,
    open_accounts,
    read_topic,
    server_url,
    stop_worker,
    until,
    whole_log,
)
from ._messaging_helpers import fixture_broker as fixture_broker  # fixtures: pytest finds
from ._messaging_helpers import fixture_names as fixture_names  # them by their names

_CHILD = Path(__file__).with_name("_messaging_child.py")
FAST = Backoff(base=0.01, factor=2.0, maximum=0.05, jitter=0.0)


class Child:
    """A ``_messaging_child.py`` process and the lines it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[str] = []
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            if line.endswith(b"\n"):  # a line cut short by the kill says nothing
                self.lines.append(line.decode().strip())

    def said(self, kind: str) -> list[str]:
        """The arguments of the lines starting with ``kind``."""
        return [line.split(" ", 1)[1] for line in self.lines if line.split(" ")[0] == kind]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        def done() -> bool:
            if self.proc.returncode is not None:
                tail = self.log.read_text()[-3000:]
                pytest.fail(f"the child exited ({self.proc.returncode}) before {what}:\n{tail}")
            return condition()

        try:
            await until(done, what)
        except BaseException:
            print(f"child said {self.lines[-20:]}; its log:\n{self.log.read_text()[-3000:]}")
            raise

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), WAIT) == -signal.SIGKILL
        await asyncio.wait_for(self._reading, WAIT)  # the lines already in the pipe


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    """Start ``_messaging_child.py`` with arguments; none outlives the test."""
    started: list[Child] = []
    log = tmp_path / "child.log"

    async def start(*args: str) -> Child:
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(_CHILD), *args, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
        child = Child(proc, log)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()
        child._reading.cancel()


def broker_args(kind: str, broker: Broker, request: pytest.FixtureRequest) -> list[str]:
    """The child's arguments naming the same broker (and key prefix) as ``broker``."""
    prefix = broker.prefix.rstrip(":")  # type: ignore[attr-defined]
    return ["--broker", kind, "--url", server_url(request, kind), "--prefix", prefix]


def published_pages(child: Child, pages: int) -> bool:
    return len(child.said("p")) >= pages


def assert_each_event_once(published: list[Message], log_positions: list[int]) -> None:
    positions = [int(m.headers[headers.POSITION]) for m in published]
    assert positions == log_positions, (
        f"{len(positions)} messages for {len(log_positions)} events; "
        f"repeated: {sorted(p for p in set(positions) if positions.count(p) > 1)[:10]}, "
        f"missing: {sorted(set(log_positions) - set(positions))[:10]}"
    )
    assert len({m.id for m in published}) == len(published)


# -- the relay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_relay_killed_again_and_again_publishes_every_event_exactly_once(
    kind: str,
    broker: Broker,
    names: Names,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    spawn: Callable[..., Awaitable[Child]],
) -> None:
    rng = random.Random()
    accounts = [f"acc-{n}" for n in range(30)]
    child_args = [
        "relay", *broker_args(kind, broker, request), "--topic", names.topic,
        "--events", str(tmp_path / "events.db"), "--read", str(tmp_path / "read.db"),
        "--page-size", "20", "--owner", "relay-1",
    ]  # fmt: skip
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await open_accounts(store, accounts)
        stalled = 0
        # Even rounds (the last one too) kill a relay stalled between a page's publish and
        # its checkpoint: the next relay publishes that page again. Odd rounds kill wherever
        # the relay happens to be.
        for round_ in range(5):
            # Meanwhile the application keeps appending: at least 3 pages more each round.
            for _ in range(2):
                await deposit(store, {a: rng.randint(1, 9) for a in accounts})
            stall = 0 if round_ % 2 else 2
            child = await spawn(*child_args, "--stall-after-publish", str(stall))
            pages = stall or rng.randint(1, 3)
            await child.until(partial(published_pages, child, pages), f"{pages} pages")
            if stall:
                stalled += 1
            await child.kill()

        async with SQLiteReadStore(tmp_path / "read.db") as read_store:
            # Under the dead relay's owner id: takes its lease back at once.
            relay = OutboxRelay(store, read_store, broker, topic=names.topic, owner="relay-1")
            head = await store.last_position()
            assert await relay.run_until_caught_up() == head
        published = await read_topic(broker, names.topic)
        assert_each_event_once(published, list(range(1, head + 1)))
        assert relay.duplicates >= 1  # the last stalled page came again and was dropped
        assert stalled == 3


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_a_relay_whose_checkpoint_is_reset_to_zero_publishes_no_duplicates(
    broker: Broker, names: Names, tmp_path: Path
) -> None:
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        SQLiteReadStore(tmp_path / "read.db") as read_store,
    ):
        await open_accounts(store, [f"acc-{n}" for n in range(10)])
        await deposit(store, {f"acc-{n}": n + 1 for n in range(10)})
        relay = OutboxRelay(store, read_store, broker, topic=names.topic, page_size=6)
        assert await relay.run_until_caught_up() == 20
        with closing(sqlite3.connect(tmp_path / "read.db")) as conn, conn:
            reset = conn.execute(
                "UPDATE obelisk_projection_checkpoints SET position = 0 WHERE name = ?",
                (relay.name,),
            ).rowcount
        assert reset == 1

        again = OutboxRelay(store, read_store, broker, topic=names.topic, page_size=6)
        assert await again.run_until_caught_up() == 20
        assert (again.published, again.duplicates) == (0, 20)
        assert_each_event_once(await read_topic(broker, names.topic), list(range(1, 21)))


# -- a broker restarted mid-stream -------------------------------------------------------------


@pytest.fixture
def own_server(kind: str) -> Iterator[ThrowawayProcess]:
    """A server of the test's own: it gets restarted under the test."""
    server: ThrowawayProcess = ThrowawayRedis() if kind == "redis" else ThrowawayNats()
    with server:
        yield server


BALANCES_DDL = (
    "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL)"
)


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_broker_restarted_mid_stream_loses_no_event_and_the_inbox_applies_each_once(
    kind: str, own_server: ThrowawayProcess, names: Names, tmp_path: Path,
    loop_errors: list[object],
) -> None:  # fmt: skip
    rng = random.Random()
    url: str = own_server.url  # type: ignore[attr-defined]
    accounts = [f"acc-{n}" for n in range(40)]
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        SQLiteReadStore(tmp_path / "relay.db") as relay_store,
        SQLiteReadStore(tmp_path / "worker.db") as worker_store,
        new_broker(kind, url, names.group) as relay_broker,
        new_broker(kind, url, names.group) as worker_broker,  # the same keys: one application
    ):
        async with worker_store.transaction() as tx:
            await tx.execute(BALANCES_DDL)
            await tx.execute(EFFECTS_DDL)
        inbox = Inbox(worker_store)

        async def apply(ctx: MessageContext) -> None:
            assert ctx.tx is not None
            await ctx.tx.execute(EFFECT_SQL, ctx.message.id)
            if isinstance(ctx.event, AccountOpened):
                await ctx.tx.execute(
                    "INSERT INTO balances (account, balance) VALUES (?, 0)", ctx.message.key
                )
            elif isinstance(ctx.event, MoneyDeposited):
                await ctx.tx.execute(
                    "UPDATE balances SET balance = balance + ? WHERE account = ?",
                    ctx.event.amount,
                    ctx.message.key,
                )

        relay = OutboxRelay(store, relay_store, relay_broker, topic=names.topic,
                            page_size=25, poll_interval=0.05)  # fmt: skip
        worker = MessageWorker(worker_broker, apply, group=names.group, topic=names.topic,
                               concurrency=8, inbox=inbox, backoff=FAST, max_attempts=50,
                               ack_timeout=2.0, fetch_wait=0.1)  # fmt: skip
        relay_task = asyncio.create_task(relay.run())
        worker_task = asyncio.create_task(worker.run())
        try:
            await open_accounts(store, accounts)
            restarts: list[asyncio.Future[None]] = []
            for round_ in range(12):
                await deposit(store, {a: rng.randint(1, 99) for a in rng.sample(accounts, 25)})
                # Killed, then stopped gracefully; the application appends on meanwhile.
                if round_ == 3:
                    await until(lambda: worker.handled > 0, "the worker under way")
                    restarts.append(asyncio.ensure_future(
                        asyncio.to_thread(own_server.restart, kill=True)))  # fmt: skip
                elif round_ == 8:
                    await asyncio.wait_for(restarts[0], WAIT)
                    restarts.append(asyncio.ensure_future(asyncio.to_thread(own_server.restart)))
                await asyncio.sleep(0.05)  # the relay and the worker are mid-stream
            await asyncio.wait_for(restarts[1], WAIT)
            log = await whole_log(store)
            expected = fold_balances(log)

            async def caught_up() -> bool:
                rows = await worker_store.query("SELECT account, balance FROM balances")
                return dict(rows) == expected

            await until(caught_up, "balances equal to the fold of the log")

            # Acks lost in an outage are not errors: those messages come again after the
            # ack timeout, and the inbox acknowledges them without a second effect.
            async def nothing_pending() -> bool:
                return await worker_broker.pending(names.topic, names.group) == 0

            await until(nothing_pending, "nothing pending")
        finally:
            await stop_worker(worker, worker_task)
            await stop_worker(relay, relay_task)

        published = await read_topic(relay_broker, names.topic)
        assert_each_event_once(published, [e.position for e in log])
        effects = dict(await worker_store.query("SELECT message_id, times FROM effects"))
        assert effects == {e.event_id.hex: 1 for e in log}  # each applied exactly once
        assert worker.errors + relay.errors >= 1  # the outages were seen


# -- workers killed ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_worker_killed_in_flight_leaves_its_messages_to_another_consumer_of_the_group(
    kind: str,
    broker: Broker,
    names: Names,
    request: pytest.FixtureRequest,
    spawn: Callable[..., Awaitable[Child]],
) -> None:
    sent = [message(names, f"k{n}", n) for n in range(3)]
    await broker.create_group(names.topic, names.group)
    await broker.publish(sent)
    child = await spawn(
        "worker", *broker_args(kind, broker, request),
        "--topic", names.topic, "--group", names.group, "--block",
    )  # fmt: skip
    await child.until(lambda: len(child.said("h")) == 3, "3 handlers in flight")
    await child.kill()

    again: dict[str, int] = {}

    async def handle(ctx: MessageContext) -> None:
        again[ctx.message.id] = ctx.attempt

    other = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                          ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
    task = asyncio.create_task(other.run())
    await until(lambda: len(again) == 3, "the 3 messages redelivered")
    await stop_worker(other, task)
    assert sorted(again) == sorted(m.id for m in sent)
    assert all(attempt >= 2 for attempt in again.values()), again
    assert await broker.pending(names.topic, names.group) == 0


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_message_handled_by_a_worker_killed_before_its_ack_has_no_second_effect(
    kind: str,
    broker: Broker,
    names: Names,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    spawn: Callable[..., Awaitable[Child]],
) -> None:
    sent = [message(names, f"k{n}", n) for n in range(5)]
    await broker.create_group(names.topic, names.group)
    await broker.publish(sent)
    inbox_db = tmp_path / "worker.db"
    child = await spawn(
        "worker", *broker_args(kind, broker, request),
        "--topic", names.topic, "--group", names.group, "--inbox", str(inbox_db), "--lose-acks",
    )  # fmt: skip

    def committed() -> int:
        if not inbox_db.exists():
            return 0
        with closing(sqlite3.connect(inbox_db)) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM effects").fetchone()[0])
            except sqlite3.OperationalError:  # the table is not there yet
                return 0

    await child.until(lambda: committed() == 5 and bool(child.said("a")), "5 commits, no ack")
    await child.kill()

    async with SQLiteReadStore(inbox_db) as read_store:
        inbox = Inbox(read_store)
        calls: list[str] = []

        async def handle(ctx: MessageContext) -> None:
            calls.append(ctx.message.id)

        other = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                              inbox=inbox, ack_timeout=1.0, fetch_wait=0.1)  # fmt: skip
        task = asyncio.create_task(other.run())
        await until(lambda: other.duplicates == 5, "5 redeliveries seen as duplicates")
        await stop_worker(other, task)
        assert calls == [] and other.handled == 0
        effects = dict(await read_store.query("SELECT message_id, times FROM effects"))
        assert effects == {m.id: 1 for m in sent}
        for m in sent:
            assert await inbox.handled(names.group, m.id)
    assert await broker.pending(names.topic, names.group) == 0


# -- the broker failing under a worker -------------------------------------------------------


class FailingDeadLetters(LostAcks):
    """A broker whose first ``failures`` dead-letter publishes fail as in an outage."""

    def __init__(self, inner: Broker, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    async def publish(
        self, messages: Sequence[Message], *, sequences: Sequence[int] | None = None
    ) -> Published:
        if self.failures and messages[0].topic.startswith("dlq."):
            self.failures -= 1
            raise BrokerUnavailable("the broker is restarting")
        return await self.inner.publish(messages, sequences=sequences)

    async def ack(self, topic: str, group: str, deliveries: Sequence[Delivery]) -> None:
        await self.inner.ack(topic, group, deliveries)


async def test_a_dead_letter_lost_in_an_outage_is_retried_and_the_worker_keeps_going(
    names: Names, loop_errors: list[object]
) -> None:
    inner = MemoryBroker()
    broker = FailingDeadLetters(inner, failures=2)
    # Two poison messages, each followed by a good one of its key, then more good ones.
    keys = ["a", "a", "b", "b"] + [f"k{n}" for n in range(4, 12)]
    sent = [message(names, key, n) for n, key in enumerate(keys)]
    await inner.publish(sent)
    handled: set[int] = set()

    async def handle(ctx: MessageContext) -> None:
        n = int(ctx.message.payload)
        if n in (0, 2):
            raise RuntimeError(f"poison {n}")
        handled.add(n)

    worker = MessageWorker(broker, handle, group=names.group, topic=names.topic,
                           concurrency=1, max_attempts=1, ack_timeout=1.0,
                           fetch_wait=0.1)  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(handled) == 10, "the 10 good messages handled", WAIT / 3)
        await until(lambda: worker.dead_lettered == 2, "both poison messages dead-lettered")
    finally:
        await stop_worker(worker, task)
    letters = await read_topic(inner, names.dlq())
    assert sorted(int(m.payload) for m in letters) == [0, 2]
    assert all(m.headers[ERROR].startswith("RuntimeError: poison") for m in letters)
    assert await inner.pending(names.topic, names.group) == 0
