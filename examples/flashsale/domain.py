"""The flash sale's domain: sections with a fixed stock, and reservations.

A **section** (not the whole venue) is the aggregate that guards stock: buyers of different
sections never contend, and one section's commands are serialised by the unit of work's
keyed lock and the append's version check — no seat is sold twice. A **reservation** holds
seats until it is paid or its deadline passes; reserving, paying and expiring each change
the reservation and its section in one atomic append.
"""

from __future__ import annotations

from obelisk import Aggregate, Command, DomainError, Event, UnitOfWork, command
from obelisk.application import Application

__all__ = [
    "Expire",
    "OpenSection",
    "Pay",
    "Reservation",
    "Reserve",
    "Section",
    "SoldOut",
    "register",
]


class SoldOut(DomainError):
    """Fewer seats are left than asked for; nothing was reserved."""


# -- events ------------------------------------------------------------------------------


class SectionOpened(Event):
    event_type = "flashsale.SectionOpened"
    sale_id: str
    name: str
    stock: int


class SeatsHeld(Event):
    event_type = "flashsale.SeatsHeld"
    reservation_id: str
    seats: int


class SeatsReleased(Event):
    event_type = "flashsale.SeatsReleased"
    reservation_id: str
    seats: int


class SeatsSold(Event):
    event_type = "flashsale.SeatsSold"
    reservation_id: str
    seats: int


class ReservationPlaced(Event):
    event_type = "flashsale.ReservationPlaced"
    section_id: str
    customer_id: str
    seats: int


class ReservationPaid(Event):
    event_type = "flashsale.ReservationPaid"


class ReservationExpired(Event):
    event_type = "flashsale.ReservationExpired"


# -- aggregates ----------------------------------------------------------------------------


class Section(Aggregate):
    aggregate_type = "flashsale.Section"
    stock: int = 0
    held: int = 0
    sold: int = 0

    @classmethod
    def open(cls, section_id: str, sale_id: str, name: str, stock: int) -> Section:
        if stock < 0:
            raise DomainError("stock cannot be negative")
        section = cls(section_id)
        section.record(SectionOpened(sale_id=sale_id, name=name, stock=stock))
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
        self.record(SeatsHeld(reservation_id=reservation_id, seats=seats))

    @command
    def release(self, reservation_id: str, seats: int) -> None:
        self.record(SeatsReleased(reservation_id=reservation_id, seats=seats))

    @command
    def sell(self, reservation_id: str, seats: int) -> None:
        self.record(SeatsSold(reservation_id=reservation_id, seats=seats))

    def apply_opened(self, event: SectionOpened) -> None:
        self.stock = event.stock

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
    state: str = "none"

    @classmethod
    def place(
        cls, reservation_id: str, section_id: str, customer_id: str, seats: int
    ) -> Reservation:
        reservation = cls(reservation_id)
        reservation.record(
            ReservationPlaced(section_id=section_id, customer_id=customer_id, seats=seats)
        )
        return reservation

    @command
    def pay(self) -> None:
        if self.state != "held":
            raise DomainError(f"reservation {self.id} is {self.state}: it cannot be paid")
        self.record(ReservationPaid())

    @command
    def expire(self) -> None:
        if self.state != "held":
            raise DomainError(f"reservation {self.id} is {self.state}: it cannot expire")
        self.record(ReservationExpired())

    def apply_placed(self, event: ReservationPlaced) -> None:
        self.section_id, self.customer_id = event.section_id, event.customer_id
        self.seats, self.state = event.seats, "held"

    def apply_paid(self, event: ReservationPaid) -> None:
        self.state = "paid"

    def apply_expired(self, event: ReservationExpired) -> None:
        self.state = "expired"


# -- commands ----------------------------------------------------------------------------


class OpenSection(Command):
    command_type = "flashsale.OpenSection"
    section_id: str
    sale_id: str
    name: str
    stock: int


class Reserve(Command):
    command_type = "flashsale.Reserve"
    reservation_id: str
    section_id: str
    customer_id: str
    seats: int


class Pay(Command):
    command_type = "flashsale.Pay"
    reservation_id: str


class Expire(Command):
    command_type = "flashsale.Expire"
    reservation_id: str


def register(app: Application) -> Application:
    """Route the flash sale's commands to their handlers on ``app``."""

    @app.handler(OpenSection)
    async def open_section(uow: UnitOfWork, cmd: OpenSection) -> None:
        uow.add(Section.open(cmd.section_id, cmd.sale_id, cmd.name, cmd.stock))

    @app.handler(Reserve)
    async def reserve(uow: UnitOfWork, cmd: Reserve) -> None:
        section = await uow.get(Section, cmd.section_id)
        section.hold(cmd.reservation_id, cmd.seats)
        uow.add(Reservation.place(cmd.reservation_id, cmd.section_id, cmd.customer_id, cmd.seats))

    @app.handler(Pay)
    async def pay(uow: UnitOfWork, cmd: Pay) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.pay()
        section = await uow.get(Section, reservation.section_id)
        section.sell(reservation.id, reservation.seats)

    @app.handler(Expire)
    async def expire(uow: UnitOfWork, cmd: Expire) -> None:
        reservation = await uow.get(Reservation, cmd.reservation_id)
        reservation.expire()
        section = await uow.get(Section, reservation.section_id)
        section.release(reservation.id, reservation.seats)

    return app
