"""Messaging under observation: a worker's span links to the command that wrote the event,
across the relay (the trace context rides in a message header); relay and worker counters
are exported."""

from __future__ import annotations

import asyncio
from pathlib import Path

from obelisk.application import Application
from obelisk.demo.bank import Deposit, OpenAccount, register_bank_handlers
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.relay import OutboxRelay
from obelisk.messaging.worker import MessageContext, MessageWorker
from obelisk.observability import Observer
from obelisk.observability.metrics import Metrics
from obelisk.projections import read_store_from_url

from .test_observability import _samples, _tracing


async def test_a_handled_message_is_a_span_linked_to_the_command_that_wrote_its_event(
    tmp_path: Path,
) -> None:
    tracer, exporter = _tracing()
    metrics = Metrics()
    app = register_bank_handlers(
        Application(f"sqlite:///{tmp_path / 'events.db'}", observer=Observer(tracer=tracer))
    )
    broker = MemoryBroker()
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        await app.handle(Deposit(account_id="a", amount=5))
        relay = OutboxRelay(app.store, read_store, broker, tracer=tracer)
        metrics.watch_relay(relay)
        await relay.run_until_caught_up()

        handled: list[str] = []
        both = asyncio.Event()

        async def handler(ctx: MessageContext) -> None:
            handled.append(ctx.message.subject)
            if len(handled) == 2:
                both.set()

        worker = MessageWorker(broker, handler, group="audit", tracer=tracer, fetch_wait=0.05)
        metrics.watch_worker(worker)
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(30):
            await both.wait()
        worker.stop()
        await task
    spans = exporter.get_finished_spans()
    commands = {s.name: s for s in spans if s.name.startswith("obelisk.command")}
    deposit = commands["obelisk.command Deposit"]
    messages = [s for s in spans if s.name == "obelisk.message audit"]
    assert len(messages) == 2
    linked = {
        (link.context.trace_id, link.context.span_id) for s in messages for link in s.links
    }
    assert (deposit.context.trace_id, deposit.context.span_id) in linked
    (publish,) = [s for s in spans if s.name == "obelisk.projection.batch"]
    assert publish.attributes is not None and publish.attributes["obelisk.events"] == 2

    samples = _samples(metrics)
    assert samples[("obelisk_relay_published_total", (("relay", "relay:relay"),))] == 2
    assert samples[("obelisk_worker_handled_total", (("group", "audit"),))] == 2
    assert samples[("obelisk_worker_dead_letters_total", (("group", "audit"),))] == 0
    assert samples[("obelisk_worker_handler_seconds_count", (("group", "audit"),))] == 2
    # Both relayed events carried their commit time: the worker measured its lag.
    assert samples[("obelisk_worker_lag_seconds_count", (("group", "audit"),))] == 2
    assert samples[("obelisk_worker_last_lag_seconds", (("group", "audit"),))] > 0
