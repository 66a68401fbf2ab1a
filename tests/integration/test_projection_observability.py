"""Projections under observation: metrics read from the runner, a span per batch linked to
the traced commands that wrote its events."""

from __future__ import annotations

from pathlib import Path

from obelisk.application import Application
from obelisk.demo.bank import (
    AccountOpened,
    Deposit,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.observability import Observer
from obelisk.observability.metrics import Metrics
from obelisk.projections import (
    Context,
    Projection,
    ProjectionRunner,
    Table,
    handles,
    read_store_from_url,
)

from .test_observability import _samples, _tracing


class Balances(Projection):
    name = "observed_balances"
    accounts = Table("accounts", {"account_id": "text", "balance": "integer"}, key="account_id")

    @handles(AccountOpened)
    def opened(self, event: AccountOpened, ctx: Context) -> None:
        ctx.upsert(self.accounts, account_id=ctx.stream_id, balance=0)

    @handles(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, ctx: Context) -> None:
        ctx.add(self.accounts, ctx.stream_id, balance=event.amount)


async def test_a_watched_runner_reports_its_events_checkpoint_lag_and_batches(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    app = register_bank_handlers(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        for i in range(5):
            await app.handle(OpenAccount(account_id=f"a{i}", owner="ada"))
        last = await app.handle(Deposit(account_id="a1", amount=3))
        runner = ProjectionRunner(Balances(), app.store, read_store, page_size=4)
        metrics.watch_projection(runner)
        await runner.run_until_caught_up()
        samples = _samples(metrics)
    labels = (("partition", "0"), ("projection", "observed_balances"))
    assert samples[("obelisk_projection_events_total", labels)] == 6
    assert samples[("obelisk_projection_position", labels)] == last
    assert samples[("obelisk_projection_lag_positions", labels)] == 0
    assert samples[("obelisk_projection_lag_seconds", labels)] == 0
    # Six events in pages of four: two batches.
    assert samples[("obelisk_projection_batch_events_count", labels)] == 2
    assert samples[("obelisk_projection_batch_seconds_count", labels)] == 2
    assert samples[("obelisk_projection_dead_letters_total", labels)] == 0


async def test_each_batch_is_a_span_linked_to_the_commands_that_wrote_its_events(
    tmp_path: Path,
) -> None:
    tracer, exporter = _tracing()
    observer = Observer(tracer=tracer)
    app = register_bank_handlers(
        Application(f"sqlite:///{tmp_path / 'events.db'}", observer=observer)
    )
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        await app.handle(Deposit(account_id="a", amount=2))
        commands = [
            s for s in exporter.get_finished_spans() if s.name.startswith("obelisk.command")
        ]
        runner = ProjectionRunner(Balances(), app.store, read_store, tracer=tracer)
        await runner.run_until_caught_up()
    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "obelisk.projection.batch"]
    assert batch.attributes is not None
    assert batch.attributes["obelisk.projection"] == "observed_balances"
    assert batch.attributes["obelisk.events"] == 2
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(c.context.trace_id, c.context.span_id) for c in commands}
    assert len(commands) == 2
