"""The flash sale's read side: availability per section, orders per customer, and the
reservation process (expiry at a deadline unless paid).

``Availability`` is what buyers poll; its batches invalidate the cached availability of the
sections (and sales) they changed (``ctx.invalidate``): tags ``section:<id>`` and
``sale:<id>``. ``Orders`` lists a customer's reservations with
keyset pagination over ``(customer_id, reservation_id)``. ``Expiries`` is the process
manager: a placed reservation gets an expiry deadline; paying cancels it.
"""

from __future__ import annotations

from typing import ClassVar

from examples.flashsale.domain import (
    Expire,
    PaymentDeclined,
    PaymentRequested,
    ReservationExpired,
    ReservationPaid,
    ReservationPlaced,
    SeatsHeld,
    SeatsReleased,
    SeatsSold,
    SectionOpened,
)
from obelisk.messaging.process import ProcessManager
from obelisk.projections import Context, Index, Projection, Table, handles
from obelisk.projections.readstore import ReadStore

__all__ = ["Availability", "Expiries", "Orders", "read_sql"]


class Availability(Projection):
    name = "flashsale_availability"
    sections = Table(
        "availability",
        {"section_id": "text", "sale_id": "text", "name": "text", "stock": "integer",
         "held": "integer", "sold": "integer", "price_cents": "integer"},
        key="section_id",
        indexes=[Index("sale_id", "section_id")],
    )  # fmt: skip

    @handles(SectionOpened)
    def opened(self, event: SectionOpened, ctx: Context) -> None:
        ctx.upsert(self.sections, section_id=ctx.stream_id, sale_id=event.sale_id,
                   name=event.name, stock=event.stock, held=0, sold=0,
                   price_cents=event.price_cents)  # fmt: skip
        ctx.invalidate(f"section:{ctx.stream_id}", f"sale:{event.sale_id}")

    @handles(SeatsHeld)
    def held(self, event: SeatsHeld, ctx: Context) -> None:
        ctx.add(self.sections, ctx.stream_id, held=event.seats)
        ctx.invalidate(f"section:{ctx.stream_id}", f"sale:{event.sale_id}")

    @handles(SeatsReleased)
    def released(self, event: SeatsReleased, ctx: Context) -> None:
        ctx.add(self.sections, ctx.stream_id, held=-event.seats)
        ctx.invalidate(f"section:{ctx.stream_id}", f"sale:{event.sale_id}")

    @handles(SeatsSold)
    def sold(self, event: SeatsSold, ctx: Context) -> None:
        ctx.add(self.sections, ctx.stream_id, held=-event.seats, sold=event.seats)
        ctx.invalidate(f"section:{ctx.stream_id}", f"sale:{event.sale_id}")


class Orders(Projection):
    name = "flashsale_orders"
    orders = Table(
        "orders",
        {"reservation_id": "text", "customer_id": "text", "section_id": "text",
         "seats": "integer", "amount_cents": "integer", "state": "text",
         "payment": "text"},
        key="reservation_id",
        indexes=[Index("customer_id", "reservation_id")],
    )  # fmt: skip

    @handles(ReservationPlaced)
    def placed(self, event: ReservationPlaced, ctx: Context) -> None:
        ctx.upsert(self.orders, reservation_id=ctx.stream_id, customer_id=event.customer_id,
                   section_id=event.section_id, seats=event.seats,
                   amount_cents=event.amount_cents, state="held", payment="none")  # fmt: skip

    @handles(PaymentRequested)
    def payment_requested(self, event: PaymentRequested, ctx: Context) -> None:
        ctx.upsert(self.orders, reservation_id=ctx.stream_id, payment="requested")

    @handles(PaymentDeclined)
    def payment_declined(self, event: PaymentDeclined, ctx: Context) -> None:
        ctx.upsert(self.orders, reservation_id=ctx.stream_id, payment="declined")

    @handles(ReservationPaid)
    def paid(self, event: ReservationPaid, ctx: Context) -> None:
        ctx.upsert(self.orders, reservation_id=ctx.stream_id, state="paid", payment="charged")

    @handles(ReservationExpired)
    def expired(self, event: ReservationExpired, ctx: Context) -> None:
        ctx.upsert(self.orders, reservation_id=ctx.stream_id, state="expired")


class Expiries(ProcessManager):
    """Expire a reservation ``hold_seconds`` after it was placed, unless it is paid."""

    name = "flashsale_expiries"
    hold_seconds: ClassVar[float] = 600.0

    @handles(ReservationPlaced)
    async def placed(self, event: ReservationPlaced, ctx: Context) -> None:
        await self.schedule(ctx, "expire", Expire(reservation_id=ctx.stream_id),
                            after=self.hold_seconds)  # fmt: skip

    @handles(ReservationPaid)
    async def paid(self, event: ReservationPaid, ctx: Context) -> None:
        await self.cancel(ctx, "expire")


_TABLES = ("availability", "orders", "sim_charges", "sim_emails")


def read_sql(read_store: ReadStore, statement: str) -> str:
    """``statement`` with ``{availability}``, ``{orders}``, ``{sim_charges}`` and
    ``{sim_emails}`` as the read store names them (schema-qualified on PostgreSQL) and
    ``?`` placeholders in its style."""
    names = {name: read_store.qualified(name) for name in _TABLES}
    return read_store.dialect.sql(statement.format(**names))
