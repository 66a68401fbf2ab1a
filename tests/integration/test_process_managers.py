"""Process managers with durable deadlines, on SQLite and PostgreSQL.

A hold on seats expires at its deadline unless it is paid first. The process manager
follows the log with a projection runner and schedules the expiry in its batch's
transaction; the scheduler sends due commands with an idempotency key. What is checked:
the deadline fires, a payment cancels it, a deadline that fell due while no scheduler ran
fires once when one starts, two schedulers racing fire it once, and a scheduler that died
between sending and its bookkeeping causes no second effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from obelisk import Aggregate, Application, Command, Event, UnitOfWork, command
from obelisk.errors import DomainError
from obelisk.messaging.process import CommandScheduler, ProcessManager, ensure_scheduled_table
from obelisk.projections import (
    Context,
    ProjectionRunner,
    ReadStore,
    Table,
    handles,
    read_store_from_url,
)

WAIT = 30.0


class HoldPlaced(Event):
    event_type = "test_pm.HoldPlaced"
    seats: int


class HoldPaid(Event):
    event_type = "test_pm.HoldPaid"


class HoldExpired(Event):
    event_type = "test_pm.HoldExpired"


class Hold(Aggregate):
    aggregate_type = "test_pm.Hold"
    state: str = "none"

    @classmethod
    def place(cls, hold_id: str, seats: int) -> Hold:
        hold = cls(hold_id)
        hold.record(HoldPlaced(seats=seats))
        return hold

    @command
    def pay(self) -> None:
        if self.state != "held":
            raise DomainError(f"cannot pay a hold that is {self.state}")
        self.record(HoldPaid())

    @command
    def expire(self) -> None:
        if self.state != "held":
            raise DomainError(f"cannot expire a hold that is {self.state}")
        self.record(HoldExpired())

    def apply_placed(self, event: HoldPlaced) -> None:
        self.state = "held"

    def apply_paid(self, event: HoldPaid) -> None:
        self.state = "paid"

    def apply_expired(self, event: HoldExpired) -> None:
        self.state = "expired"


class PlaceHold(Command):
    command_type = "test_pm.PlaceHold"
    hold_id: str
    seats: int


class PayHold(Command):
    command_type = "test_pm.PayHold"
    hold_id: str


class ExpireHold(Command):
    command_type = "test_pm.ExpireHold"
    hold_id: str


class Holds(ProcessManager):
    name = "holds_manager"
    holds = Table("pm_holds", {"hold_id": "text", "state": "text"}, key="hold_id")
    expiry_seconds = 0.3

    @handles(HoldPlaced)
    async def placed(self, event: HoldPlaced, ctx: Context) -> None:
        ctx.upsert(self.holds, hold_id=ctx.stream_id, state="held")
        await self.schedule(
            ctx, "expire", ExpireHold(hold_id=ctx.stream_id), after=self.expiry_seconds
        )

    @handles(HoldPaid)
    async def paid(self, event: HoldPaid, ctx: Context) -> None:
        ctx.upsert(self.holds, hold_id=ctx.stream_id, state="paid")
        await self.cancel(ctx, "expire")


def make_app(url: str) -> Application:
    app = Application(url)

    @app.handler(PlaceHold)
    async def place(uow: UnitOfWork, cmd: PlaceHold) -> None:
        uow.add(Hold.place(cmd.hold_id, cmd.seats))

    @app.handler(PayHold)
    async def pay(uow: UnitOfWork, cmd: PayHold) -> None:
        (await uow.get(Hold, cmd.hold_id)).pay()

    @app.handler(ExpireHold)
    async def expire(uow: UnitOfWork, cmd: ExpireHold) -> None:
        (await uow.get(Hold, cmd.hold_id)).expire()

    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}", f"sqlite:///{tmp_path / 'read.db'}"
    dsn = request.getfixturevalue("postgres_dsn")
    schema = request.getfixturevalue("pg_schema")
    return f"{dsn}?schema={schema}", f"{dsn}?schema={schema}"


@asynccontextmanager
async def opened(urls: tuple[str, str]) -> AsyncIterator[tuple[Application, ReadStore]]:
    app = make_app(urls[0])
    async with app, read_store_from_url(urls[1]) as read_store:
        await ensure_scheduled_table(read_store)
        yield app, read_store


async def events_of(app: Application, hold_id: str) -> list[str]:
    return [type(e.event).__name__ for e in await app.store.read_stream(hold_id)]


async def wait_for_events(app: Application, hold_id: str, count: int) -> list[str]:
    async with asyncio.timeout(WAIT):
        while len(found := await events_of(app, hold_id)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return found


async def test_an_unpaid_hold_expires_at_its_deadline(urls: tuple[str, str]) -> None:
    async with opened(urls) as (app, read_store):
        scheduler = CommandScheduler(read_store, app, poll_interval=0.05)
        runner = ProjectionRunner(Holds(), app.store, read_store, poll_interval=0.05)
        tasks = [asyncio.create_task(runner.run()), asyncio.create_task(scheduler.run())]
        try:
            placed_at = time.time()
            await app.handle(PlaceHold(hold_id="h1", seats=2))
            assert await wait_for_events(app, "h1", 2) == ["HoldPlaced", "HoldExpired"]
            (expired,) = (await app.store.read_stream("h1"))[1:]
            assert expired.recorded_at >= placed_at + Holds.expiry_seconds - 0.05
            # The expiry carries the conversation: correlated by hold, caused by the deadline.
            assert expired.correlation_id == "h1"
            # The scheduler books the outcome after the command committed: wait for it.
            async with asyncio.timeout(WAIT):
                while await scheduler.outcomes("h1") != [("expire", "sent")]:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            runner.stop()
            scheduler.stop()
            await asyncio.gather(*tasks)


async def test_a_payment_before_the_deadline_cancels_it(urls: tuple[str, str]) -> None:
    async with opened(urls) as (app, read_store):
        runner = ProjectionRunner(Holds(), app.store, read_store)
        await app.handle(PlaceHold(hold_id="h2", seats=1))
        await app.handle(PayHold(hold_id="h2"))
        await runner.run_until_caught_up()
        scheduler = CommandScheduler(read_store, app)
        assert await scheduler.pending() == []  # cancelled in the batch that saw the payment
        await asyncio.sleep(Holds.expiry_seconds)
        assert await scheduler.send_due() == 0
        assert await events_of(app, "h2") == ["HoldPlaced", "HoldPaid"]


async def test_a_deadline_due_while_no_scheduler_ran_fires_once_when_two_start(
    urls: tuple[str, str],
) -> None:
    async with opened(urls) as (app, read_store):
        await app.handle(PlaceHold(hold_id="h3", seats=1))
        await ProjectionRunner(Holds(), app.store, read_store).run_until_caught_up()
        await asyncio.sleep(Holds.expiry_seconds + 0.05)  # due, and nobody is looking
        first = CommandScheduler(read_store, app)
        second = CommandScheduler(read_store, app)
        settled = await asyncio.gather(first.send_due(), second.send_due())
        assert sorted(settled) == [0, 1]  # claimed by exactly one of them
        assert await events_of(app, "h3") == ["HoldPlaced", "HoldExpired"]
        assert await first.send_due() + await second.send_due() == 0


async def test_a_command_sent_again_after_a_scheduler_died_has_no_second_effect(
    urls: tuple[str, str],
) -> None:
    async with opened(urls) as (app, read_store):
        # A hold whose expiry cannot be refused twice by the domain would still be safe;
        # here the second send must be absorbed by the idempotent append itself.
        Holds_ = type("PayLater", (Holds,), {"name": "pay_later", "expiry_seconds": 0.0})
        await app.handle(PlaceHold(hold_id="h4", seats=1))
        await ProjectionRunner(Holds_(), app.store, read_store).run_until_caught_up()
        dying = CommandScheduler(read_store, app, lease_seconds=0.2)
        (claimed,) = await dying._claim(10)
        # It sent the command, then died before recording it (its lease runs out).
        await app.handle(
            ExpireHold(hold_id="h4"),
            correlation_id=claimed.process_id,
            causation_id=claimed.id,
            idempotency_key=claimed.id,
        )
        await asyncio.sleep(0.3)
        successor = CommandScheduler(read_store, app)
        assert await successor.send_due() == 1
        assert await events_of(app, "h4") == ["HoldPlaced", "HoldExpired"]
        assert await successor.outcomes("h4") == [("expire", "sent")]


async def test_a_command_the_domain_refuses_is_settled_with_the_reason(
    urls: tuple[str, str],
) -> None:
    async with opened(urls) as (app, read_store):
        await app.handle(PlaceHold(hold_id="h5", seats=1))
        await ProjectionRunner(Holds(), app.store, read_store).run_until_caught_up()
        # Paid after the deadline was scheduled but before the runner saw the payment.
        await app.handle(PayHold(hold_id="h5"))
        await asyncio.sleep(Holds.expiry_seconds + 0.05)
        scheduler = CommandScheduler(read_store, app)
        assert await scheduler.send_due() == 1
        ((name, outcome),) = await scheduler.outcomes("h5")
        assert name == "expire" and outcome is not None
        assert outcome.startswith("rejected: cannot expire a hold that is paid")
        assert await events_of(app, "h5") == ["HoldPlaced", "HoldPaid"]


async def test_the_same_idempotency_key_twice_records_the_events_once(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'events.db'}")
    async with app:
        await app.handle(PlaceHold(hold_id="h6", seats=1))
        first = await app.handle(PayHold(hold_id="h6"), idempotency_key="pay-h6")
        again = await app.handle(PayHold(hold_id="h6"), idempotency_key="pay-h6")
        assert again == first
        assert await events_of(app, "h6") == ["HoldPlaced", "HoldPaid"]
        # The cached aggregate was not left with the payment applied twice.
        assert (await app.get(Hold, "h6")).state == "paid"


async def test_a_process_manager_is_never_rebuilt(tmp_path: Path) -> None:
    from obelisk.errors import ObeliskError
    from obelisk.projections import rebuild

    async with opened((f"sqlite:///{tmp_path / 'e.db'}", f"sqlite:///{tmp_path / 'r.db'}")) as (
        app,
        read_store,
    ):
        with pytest.raises(ObeliskError, match="is not rebuilt from the log"):
            await rebuild(Holds(), app.store, read_store)


class TablelessHolds(ProcessManager):
    """A process manager with no tables of its own (the flash sale's expiries are one)."""

    name = "tableless_holds"

    @handles(HoldPlaced)
    async def placed(self, event: HoldPlaced, ctx: Context) -> None:
        await self.schedule(ctx, "expire", ExpireHold(hold_id=ctx.stream_id), after=60)


async def test_a_process_manager_without_tables_schedules_in_the_read_stores_schema(
    urls: tuple[str, str],
) -> None:
    # On PostgreSQL with ?schema=..., the deadline must land in that schema's table, where
    # the scheduler looks (it once went to the public schema, and never fired).
    async with opened(urls) as (app, read_store):
        await app.handle(PlaceHold(hold_id="t1", seats=1))
        await ProjectionRunner(TablelessHolds(), app.store, read_store).run_until_caught_up()
        scheduled = await CommandScheduler(read_store, app).pending()
        assert [(s.process_id, s.name) for s in scheduled] == [("t1", "expire")]
