"""After a sale: every seat accounted for, checked against the sources of truth.

* the **event store** (the sections' and reservations' aggregates): no section has more
  seats held and sold than its stock; nothing is still held; the seats sold are exactly
  the seats of the paid reservations;
* the **read models** agree with the aggregates (availability, orders);
* the **payment gateway's ledger**: every paid reservation was charged its amount with
  the charge id it records; every other charge was refunded;
* the **mailer**: one confirmation per paid reservation, one notice per expired one.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from examples.flashsale.domain import Reservation, Section, register
from examples.flashsale.read_models import read_sql
from obelisk import Application
from obelisk.projections import read_store_from_url

__all__ = ["SaleCheck", "check_sale", "settled"]

MAX_PROBLEMS = 20


@dataclass
class SaleCheck:
    """The verdict and the figures it rests on."""

    stock: int = 0
    seats_sold: int = 0
    seats_held: int = 0
    oversold: int = 0
    confirmed: int = 0
    expired: int = 0
    charges: int = 0
    refunds: int = 0
    emails: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


async def settled(read_url: str, sale_id: str, reservations: int) -> bool:
    """Whether the read side shows the sale finished: every reservation paid or expired,
    no payment under way, every e-mail sent."""
    async with read_store_from_url(read_url) as read_store:
        try:
            rows = await read_store.query(
                read_sql(
                    read_store,
                    "SELECT o.state, o.payment, COUNT(*) FROM {orders} o JOIN {availability} a "
                    "ON a.section_id = o.section_id WHERE a.sale_id = ? "
                    "GROUP BY o.state, o.payment",
                ),
                sale_id,
            )
            emails = await read_store.query(
                read_sql(
                    read_store, "SELECT COUNT(*) FROM {sim_emails} WHERE reservation_id LIKE ?"
                ),
                f"{sale_id}-%",
            )
        except Exception:
            return False  # tables not there yet
    by_state: Counter[str] = Counter()
    for state, _payment, count in rows:
        by_state[state] += count
        if state == "held":
            return False  # still to be paid or to expire
    done = by_state["paid"] + by_state["expired"]
    return done == reservations and int(emails[0][0]) >= done


async def check_sale(
    store_url: str, read_url: str, sale_id: str, sections: list[str], reservations: list[str]
) -> SaleCheck:
    """Check a finished sale; ``reservations`` are the ids the buyers were answered 201."""
    check = SaleCheck()
    app = register(Application(store_url))
    async with app, read_store_from_url(read_url) as read_store:
        sold_by_section: Counter[str] = Counter()
        paid: dict[str, Reservation] = {}
        for rid in reservations:
            reservation = await app.get(Reservation, rid)
            if reservation.state == "paid":
                check.confirmed += 1
                paid[rid] = reservation
                sold_by_section[reservation.section_id] += reservation.seats
            elif reservation.state == "expired":
                check.expired += 1
            else:
                check.problem(f"reservation {rid} is still {reservation.state}")
        aggregates: dict[str, Section] = {}
        for section_id in sections:
            section = await app.get(Section, section_id)
            aggregates[section_id] = section
            check.stock += section.stock
            check.seats_sold += section.sold
            check.seats_held += section.held
            over = max(0, section.held + section.sold - section.stock)
            check.oversold += over
            if over:
                check.problem(f"section {section_id} oversold by {over} seats")
            if section.held:
                check.problem(f"section {section_id} still holds {section.held} seats")
            if section.sold != sold_by_section[section_id]:
                check.problem(f"section {section_id} sold {section.sold} seats, its paid "
                              f"reservations hold {sold_by_section[section_id]}")  # fmt: skip
        await _check_read_models(check, read_store, sale_id, aggregates, len(reservations))
        await _check_ledgers(check, read_store, sale_id, paid, check.expired)
    return check


async def _check_read_models(
    check: SaleCheck, read_store: Any, sale_id: str, aggregates: dict[str, Section], made: int
) -> None:
    sql = functools.partial(read_sql, read_store)
    rows = await read_store.query(
        sql("SELECT section_id, stock, held, sold FROM {availability} WHERE sale_id = ?"), sale_id
    )
    seen = {row[0]: (row[1], row[2], row[3]) for row in rows}
    for section_id, section in aggregates.items():
        expected = (section.stock, section.held, section.sold)
        if seen.get(section_id) != expected:
            check.problem(f"availability of {section_id} is {seen.get(section_id)}, the "
                          f"aggregate says {expected}")  # fmt: skip
    orders = await read_store.query(
        sql(
            "SELECT COUNT(*) FROM {orders} o JOIN {availability} a ON a.section_id = o.section_id "
            "WHERE a.sale_id = ?"
        ),
        sale_id,
    )
    if int(orders[0][0]) != made:
        check.problem(f"the orders read model lists {orders[0][0]} reservations, buyers "
                      f"were answered {made}")  # fmt: skip


async def _check_ledgers(
    check: SaleCheck, read_store: Any, sale_id: str, paid: dict[str, Reservation], expired: int
) -> None:
    sql = functools.partial(read_sql, read_store)
    charges = await read_store.query(
        sql(
            "SELECT reservation_id, charge_id, amount_cents, state FROM {sim_charges} "
            "WHERE reservation_id LIKE ?"
        ),
        f"{sale_id}-%",
    )
    ledger = {row[0]: (row[1], row[2], row[3]) for row in charges}
    check.charges = len(ledger)
    check.refunds = sum(1 for entry in ledger.values() if entry[2] == "refunded")
    for rid, reservation in paid.items():
        entry = ledger.get(rid)
        if entry is None or entry[2] != "charged":
            check.problem(f"paid reservation {rid} has no standing charge ({entry})")
        elif entry[0] != reservation.charge_id:
            check.problem(f"reservation {rid} records charge {reservation.charge_id!r}, the "
                          f"gateway charged {entry[0]!r}")  # fmt: skip
        elif entry[1] != reservation.amount_cents:
            check.problem(f"reservation {rid} was charged {entry[1]}, costs "
                          f"{reservation.amount_cents}")  # fmt: skip
    for rid, (_, _, state) in ledger.items():
        if rid not in paid and state != "refunded":
            check.problem(f"reservation {rid} is not paid but its charge stands")
    emails = await read_store.query(
        sql("SELECT kind, reservation_id FROM {sim_emails} WHERE reservation_id LIKE ?"),
        f"{sale_id}-%",
    )
    check.emails = len(emails)
    kinds = Counter(kind for kind, _ in emails)
    per_reservation = Counter(rid for _, rid in emails)
    if kinds["confirmation"] != len(paid) or kinds["expiry"] != expired:
        check.problem(f"e-mails: {kinds['confirmation']} confirmations for {len(paid)} paid, "
                      f"{kinds['expiry']} notices for {expired} expired")  # fmt: skip
    twice = [rid for rid, count in per_reservation.items() if count > 1]
    if twice:
        check.problem(f"{len(twice)} reservations got more than one e-mail, e.g. {twice[0]}")
