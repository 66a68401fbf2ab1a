"""The flash sale's domain: sections with a fixed stock, reservations and their payment.

A **section** (not the whole venue) is the aggregate that guards stock: buyers of different
sections never contend, and one section's commands are serialised by the unit of work's
keyed lock and the append's version check — no seat is sold twice. A **reservation** holds
seats until it is paid or its deadline passes; reserving, paying and expiring each change
the reservation and its section in one atomic append. Payment is asked for
(``RequestPayment``), carried out by the payment worker against the gateway, and confirmed
(``Pay``) or declined (``DeclinePayment``, the seats stay held until the deadline).

The commands are the HTTP request bodies: their field constraints (``msgspec.Meta``) are
checked when a body is decoded, so a malformed request never reaches a handler.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from obelisk import Aggregate, Command, DomainError, Event, UnitOfWork, command
from obelisk.application import Application

__all__ = [
    "MAX_SEATS_PER_RESERVATION",
    "DeclinePayment",
    "Expire",
    "OpenSection",
    "Pay",
    "PaymentDeclined",
    "PaymentRequested",
    "RequestPayment",
    "Reservation",
    "Reserve",
    "Section",
    "SoldOut",
    "register",
    "valid_id",
]


class SoldOut(DomainError):
    """Fewer seats are left than asked for; nothing was reserved."""


# -- events ------------------------------------------------------------------------------


class SectionOpened(Event):
    event_type = "flashsale.SectionOpened"
    sale_id: str
    name: str
    stock: int
    price_cents: int = 5000


class SeatsHeld(Event):
    event_type = "flashsale.SeatsHeld"
    reservation_id: str
    seats: int
    sale_id: str = ""


class SeatsReleased(Event):
    event_type = "flashsale.SeatsReleased"
    reservation_id: str
    seats: int
    sale_id: str = ""


class SeatsSold(Event):
    event_type = "flashsale.SeatsSold"
    reservation_id: str
    seats: int
    sale_id: str = ""


class ReservationPlaced(Event):
    event_type = "flashsale.ReservationPlaced"
    section_id: str
    customer_id: str
    seats: int
    amount_cents: int = 0


class PaymentRequested(Event):
    event_type = "flashsale.PaymentRequested"
    customer_id: str
    amount_cents: int


class PaymentDeclined(Event):
    event_type = "flashsale.PaymentDeclined"
    reason: str


class ReservationPaid(Event):
    event_type = "flashsale.ReservationPaid"
    charge_id: str = ""


class ReservationExpired(Event):
    event_type = "flashsale.ReservationExpired"


# -- aggregates ----------------------------------------------------------------------------


class Section(Aggregate):
    aggregate_type = "flashsale.Section"
    stock: int = 0
    held: int = 0
    sold: int = 0
    price_cents: int = 0
    sale_id: str = ""

    @classmethod
    def open(
        cls, section_id: str, sale_id: str, name: str, stock: int, price_cents: int = 5000
    ) -> Section:
        if stock < 0:
            raise DomainError("stock cannot be negative")
        section = cls(section_id)
        section.record(
            SectionOpened(sale_id=sale_id, name=name, stock=stock, price_cents=price_cents)
        )
        return section

    @property
    def available(self) -> int:
        return self.stock - self.held - self.sold

    @command
    def hold(self, reservation_id: str, seats: int) -> None:
        if seats < 1:
            raise DomainError("reserve at least one seat")
        if seats > self.available:
            raise SoldOut(f"{self.available} seats left in {self.id}, {seats} asked for")
        self.record(SeatsHeld(reservation_id=reservation_id, seats=seats, sale_id=self.sale_id))

    @command
    def release(self, reservation_id: str, seats: int) -> None:
        self.record(SeatsReleased(reservation_id=reservation_id, seats=seats, sale_id=self.sale_id))

    @command
    def sell(self, reservation_id: str, seats: int) -> None:
        self.record(SeatsSold(reservation_id=reservation_id, seats=seats, sale_id=self.sale_id))

    def apply_opened(self, event: SectionOpened) -> None:
        self.stock, self.price_cents, self.sale_id = event.stock, event.price_cents, event.sale_id

    def apply_held(self, event: SeatsHeld) -> None:
        self.held += event.seats

    def apply_released(self, event: SeatsReleased) -> None:
        self.held -= event.seats

    def apply_sold(self, event: SeatsSold) -> None:
        self.held -= event.seats
        self.sold += event.seats


class Reservation(Aggregate):
    aggregate_type = "flashsale.Reservation"
    section_id: str = ""
    customer_id: str = ""
    seats: int = 0
    amount_cents: int = 0
    state: str = "none"
    payment: str = "none"  # none -> requested -> (declined | charged)
    charge_id: str = ""  # the gateway's charge, once paid

    @classmethod
    def place(
        cls,
        reservation_id: str,
        section_id: str,
        customer_id: str,
        seats: int,
        amount_cents: int = 0,
    ) -> Reservation:
        reservation = cls(reservation_id)
        reservation.record(
            ReservationPlaced(
                section_id=section_id,
                customer_id=customer_id,
                seats=seats,
                amount_cents=amount_cents,
            )
        )
        return reservation

    @command
    def request_payment(self) -> None:
        if self.state != "held":
            raise DomainError(f"reservation {self.id} is {self.state}: it cannot be paid")
        if self.payment == "requested":
            raise DomainError(f"payment of reservation {self.id} is already under way")
        self.record(PaymentRequested(customer_id=self.customer_id, amount_cents=self.amount_cents))

    @command
    def decline_payment(self, reason: str) -> None:
        if self.state == "held" and self.payment == "requested":
            self.record(PaymentDeclined(reason=reason))

    @command
    def pay(self, charge_id: str = "") -> None:
        if self.state != "held":
            raise DomainError(f"reservation {self.id} is {self.state}: it cannot be paid")
        self.record(ReservationPaid(charge_id=charge_id))

    @command
    def expire(self) -> None:
        if self.state != "held":
            raise DomainError(f"reservation {self.id} is {self.state}: it cannot expire")
        self.record(ReservationExpired())

    def apply_placed(self, event: ReservationPlaced) -> None:
        self.section_id, self.customer_id = event.section_id, event.customer_id
        self.seats, self.state = event.seats, "held"
        self.amount_cents = event.amount_cents

    def apply_payment_requested(self, event: PaymentRequested) -> None:
        self.payment = "requested"

    def apply_payment_declined(self, event: PaymentDeclined) -> None:
        self.payment = "declined"

    def apply_paid(self, event: ReservationPaid) -> None:
        self.state, self.payment, self.charge_id = "paid", "charged", event.charge_id

    def apply_expired(self, event: ReservationExpired) -> None:
        self.state = "expired"


# -- commands ----------------------------------------------------------------------------


# Identifiers are short printable strings; a body breaking these bounds is refused (400)
# before any handler runs.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
MAX_SEATS_PER_RESERVATION = 8
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def valid_id(value: str) -> bool:
    """Whether ``value`` passes the rule of ``Id`` (for ids that arrive in a URL path)."""
    return _ID.fullmatch(value) is not None


class OpenSection(Command):
    command_type = "flashsale.OpenSection"
    section_id: Id
    sale_id: Id
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    stock: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
    price_cents: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 5000


class Reserve(Command):
    command_type = "flashsale.Reserve"
    reservation_id: Id
    section_id: Id
    customer_id: Id
    seats: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEATS_PER_RESERVATION)]


class RequestPayment(Command):
    command_type = "flashsale.RequestPayment"
    reservation_id: Id


class Pay(Command):
    """The payment went through (sent by the payment worker with the gateway's charge)."""

    command_type = "flashsale.Pay"
    reservation_id: Id
    charge_id: str = ""


class DeclinePayment(Command):
    command_type = "flashsale.DeclinePayment"
    reservation_id: Id
    reason: str


class Expire(Command):
    command_type = "flashsale.Expire"
    reservation_id: Id


def register(app: Application) -> Application:
    """Route the flash sale's commands to their handlers on ``app``."""

    @app.handler(OpenSection)
    async def open_section(uow: UnitOfWork, cmd: OpenSection) -> None:
        uow.add(Section.open(cmd.section_id, cmd.sale_id, cmd.name, cmd.stock, cmd.price_cents))

    @app.handler(Reserve)
    async def reserve(uow: UnitOfWork, cmd: Reserve) -> None:
        section = await uow.get(Section, cmd.section_id)
        section.hold(cmd.reservation_id, cmd.seats)
        amount = cmd.seats * section.price_cents
        uow.add(
            Reservation.place(
                cmd.reservation_id, cmd.section_id, cmd.customer_id, cmd.seats, amount
            )
        )

    @app.handler(RequestPayment)
    async def request_payment(uow: UnitOfWork, cmd: RequestPayment) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.request_payment()

    @app.handler(DeclinePayment)
    async def decline_payment(uow: UnitOfWork, cmd: DeclinePayment) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.decline_payment(cmd.reason)

    @app.handler(Pay)
    async def pay(uow: UnitOfWork, cmd: Pay) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.pay(cmd.charge_id)
        section = await uow.get(Section, reservation.section_id)
        section.sell(reservation.id, reservation.seats)

    @app.handler(Expire)
    async def expire(uow: UnitOfWork, cmd: Expire) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.expire()
        section = await uow.get(Section, reservation.section_id)
        section.release(reservation.id, reservation.seats)

    return app
