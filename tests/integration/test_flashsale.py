"""The flash sale's domain and read side under concurrent buyers (SQLite): no seat is ever
sold twice, unpaid reservations expire at their deadline, and the read models agree."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from examples.flashsale.domain import (
    Expire,
    OpenSection,
    Pay,
    Reservation,
    Reserve,
    Section,
    SoldOut,
    register,
)
from examples.flashsale.read_models import Availability, Expiries, Orders
from obelisk import Application, DomainError
from obelisk.caching import QueryCache
from obelisk.messaging.process import CommandScheduler, ensure_scheduled_table
from obelisk.projections import ProjectionRunner, fetch_page, read_store_from_url

STOCK = {"sec-a": 40, "sec-b": 25, "sec-c": 10}


async def test_many_concurrent_buyers_never_oversell_and_the_read_models_agree(
    tmp_path: Path,
) -> None:
    app = register(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        for section, stock in STOCK.items():
            await app.handle(OpenSection(section_id=section, sale_id="s1", name=section,
                                         stock=stock))  # fmt: skip
        sold_out = 0
        accepted: dict[str, int] = dict.fromkeys(STOCK, 0)
        rng = random.Random(7)

        async def buyer(n: int) -> None:
            nonlocal sold_out
            section = rng.choice(sorted(STOCK))
            seats = rng.randint(1, 4)
            try:
                await app.handle(Reserve(reservation_id=f"r{n}", section_id=section,
                                         customer_id=f"c{n % 17}", seats=seats))  # fmt: skip
                accepted[section] += seats
            except SoldOut:
                sold_out += 1

        await asyncio.gather(*(buyer(n) for n in range(300)))  # far more demand than stock
        assert sold_out > 0
        for section, stock in STOCK.items():
            state = await app.get(Section, section)
            assert state.held == accepted[section] <= stock  # never oversold
            assert state.available >= 0

        cache = QueryCache()
        for projection in (Availability(), Orders()):
            await ProjectionRunner(projection, app.store, read_store,
                                   invalidate=cache.invalidate).run_until_caught_up()  # fmt: skip
        rows = await read_store.query("SELECT section_id, stock, held, sold FROM availability")
        assert {r[0]: (r[1], r[2], r[3]) for r in rows} == {
            s: (STOCK[s], accepted[s], 0) for s in STOCK
        }
        # A customer's orders, page by page over the declared index.
        first = await fetch_page(read_store, Orders.orders, order_by=("reservation_id",),
                                 where={"customer_id": "c3"}, limit=5)  # fmt: skip
        assert all(row["customer_id"] == "c3" for row in first.rows)


async def test_an_unpaid_reservation_expires_and_returns_its_seats(tmp_path: Path) -> None:
    app = register(Application(f"sqlite:///{tmp_path / 'events.db'}"))
    async with app, read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        await ensure_scheduled_table(read_store)
        await app.handle(OpenSection(section_id="sec", sale_id="s1", name="A", stock=5))
        await app.handle(Reserve(reservation_id="paid", section_id="sec", customer_id="c1",
                                 seats=2))  # fmt: skip
        await app.handle(Reserve(reservation_id="late", section_id="sec", customer_id="c2",
                                 seats=3))  # fmt: skip
        with pytest.raises(SoldOut):
            await app.handle(Reserve(reservation_id="none", section_id="sec",
                                     customer_id="c3", seats=1))  # fmt: skip
        await app.handle(Pay(reservation_id="paid"))
        quick = type("QuickExpiries", (Expiries,), {"hold_seconds": 0.0})
        await ProjectionRunner(quick(), app.store, read_store).run_until_caught_up()
        assert await CommandScheduler(read_store, app).send_due() == 1  # "late" only
        assert (await app.get(Reservation, "late")).state == "expired"
        section = await app.get(Section, "sec")
        assert (section.sold, section.held, section.available) == (2, 0, 3)
        with pytest.raises(DomainError, match="expired: it cannot be paid"):
            await app.handle(Pay(reservation_id="late"))
        with pytest.raises(DomainError, match="paid: it cannot expire"):
            await app.handle(Expire(reservation_id="paid"))
