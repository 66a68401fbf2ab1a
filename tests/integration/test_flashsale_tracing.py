"""The flash-sale service traced: a reservation's command span, the projection batches and
the relay that carried it, and the payment worker's message span linked back to the
command that asked for payment (across the broker, through the traceparent header)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.flashsale.domain import OpenSection, RequestPayment, Reservation, Reserve
from examples.flashsale.service import FlashSale, Settings
from obelisk.observability.tracing import obelisk_tracer

WAIT = 30.0


async def test_a_paid_reservation_leaves_linked_spans_from_command_to_payment_worker(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(store=f"sqlite:///{tmp_path / 'events.db'}", payment_latency=0.0,
                        payment_failure_rate=0.0, decline_rate=0.0, mail_latency=0.0,
                        mail_failure_rate=0.0, tune_gc=False)  # fmt: skip
    sale = FlashSale(settings, tracer=obelisk_tracer(provider))
    await sale.start()
    try:
        await sale.app.handle(OpenSection(section_id="A", sale_id="s", name="A", stock=5))
        await sale.app.handle(Reserve(reservation_id="r1", section_id="A", customer_id="c",
                                      seats=2))  # fmt: skip
        await sale.app.handle(RequestPayment(reservation_id="r1"))
        async with asyncio.timeout(WAIT):
            while (await sale.app.get(Reservation, "r1")).state != "paid":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await sale.stop()
    spans = exporter.get_finished_spans()
    names = {span.name for span in spans}
    assert "obelisk.command flashsale.Reserve" in names
    assert "obelisk.command flashsale.Pay" in names
    assert "obelisk.projection.batch" in names
    (asked,) = [s for s in spans if s.name == "obelisk.command flashsale.RequestPayment"]
    handled = [s for s in spans if s.name == "obelisk.message flashsale.payments"]
    assert handled, names
    # The payment worker's span links to the trace of the command that asked for payment.
    linked = {link.context.trace_id for span in handled for link in span.links}
    assert asked.context.trace_id in linked
