"""The flash sale over real HTTP: the Litestar app of ``examples.flashsale.http`` served by
uvicorn on a free local port inside the test's event loop, its background parts
(projections, relay, workers, scheduler) running in the app's lifespan, httpx as the client.

Every refusal is checked from both sides: the answer (status and a message saying why) and
the event store (its head position unchanged, the aggregates as they were). The read side
is eventually consistent: tests wait for a runner to reach the position a command answered
(``obelisk-position``), or poll with a bound — never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from examples.flashsale.domain import (
    MAX_SEATS_PER_RESERVATION,
    Expire,
    OpenSection,
    PaymentRequested,
    RequestPayment,
    Reservation,
    ReservationPlaced,
    Reserve,
    SeatsHeld,
    Section,
)
from examples.flashsale.edge import EdgeCache
from examples.flashsale.http import MAX_BODY, create_app
from examples.flashsale.service import FlashSale, Settings
from examples.flashsale.services import PaymentGateway
from obelisk.errors import AggregateNotFound
from obelisk.messaging.message import Delivery
from obelisk.messaging.relay import message_for
from obelisk.messaging.worker import MessageContext
from obelisk.projections import read_store_from_url

WAIT = 10.0  # seconds any eventually-consistent outcome gets before the test fails
AVAILABILITY, ORDERS = 0, 1  # FlashSale.runners: Availability, Orders, Expiries, relay


# -- the service under test -----------------------------------------------------------------


@dataclass
class Service:
    sale: FlashSale
    http: httpx.AsyncClient

    async def head(self) -> int:
        """The event store's last global position."""
        return await self.sale.app.store.last_position()

    async def open(
        self, section_id: str, *, stock: int, sale_id: str = "sale-1", price_cents: int = 2500
    ) -> int:
        answer = await self.http.post("/sections", json={
            "section_id": section_id, "sale_id": sale_id, "name": section_id,
            "stock": stock, "price_cents": price_cents})  # fmt: skip
        assert answer.status_code == 201, answer.text
        return int(answer.headers["obelisk-position"])

    async def reserve(
        self,
        reservation_id: str,
        section_id: str,
        seats: int,
        *,
        customer_id: str = "c1",
        key: str | None = None,
    ) -> httpx.Response:
        headers = {} if key is None else {"idempotency-key": key}
        return await self.http.post("/reservations", headers=headers, json={
            "reservation_id": reservation_id, "section_id": section_id,
            "customer_id": customer_id, "seats": seats})  # fmt: skip

    async def reservation(self, reservation_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"/reservations/{reservation_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def caught_up(self, runner: int, position: int) -> None:
        assert await self.sale.runners[runner].wait_for(position, timeout=WAIT), (
            f"{self.sale.runners[runner]!r} did not reach position {position}"
        )


# A quiet simulated world: no latency worth waiting for, no failures, no declines; and the
# test session's garbage collector left alone (the service may retune its process's).
QUIET: dict[str, Any] = {
    "payment_latency": 0.001,
    "payment_failure_rate": 0.0,
    "decline_rate": 0.0,
    "mail_latency": 0.0,
    "mail_failure_rate": 0.0,
    "seed": 1,
    "tune_gc": False,
}


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path / 'events.db'}",
                    **{"hold_seconds": 600.0, **QUIET, **overrides})  # fmt: skip


@asynccontextmanager
async def serving(
    tmp_path: Path, *, edge: bool = False, **overrides: Any
) -> AsyncIterator[Service]:
    """The service on a free port (uvicorn, this event loop) and an httpx client for it;
    with ``edge``, behind :class:`EdgeCache` as ``examples.flashsale:app`` deploys it."""
    app = create_app(_settings(tmp_path, **overrides))
    served: Any = EdgeCache(app) if edge else app
    config = uvicorn.Config(served, host="127.0.0.1", port=0, lifespan="on",
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if task.done():
                    task.result()  # raises the startup failure, if any
                    raise AssertionError("uvicorn stopped before it started serving")
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     limits=limits) as http:  # fmt: skip
            yield Service(app.state.sale, http)
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task


@pytest.fixture
async def service(tmp_path: Path, loop_errors: list[object]) -> AsyncIterator[Service]:
    async with serving(tmp_path) as running:
        yield running


@pytest.fixture(params=["litestar", "edge"])
async def reader(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[Service]:
    """The service answering cached reads in Litestar's handlers, or first at the edge."""
    async with serving(tmp_path, edge=request.param == "edge") as running:
        yield running


async def until(probe: Callable[[], Awaitable[Any]], what: str, within: float = WAIT) -> Any:
    """``probe()``'s first truthy answer, polled; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {within} s for {what}")
        await asyncio.sleep(0.02)


def _detail(answer: httpx.Response) -> str:
    """The whole error body as text: what a client would read to learn why."""
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    return json.dumps(answer.json())


# -- malformed requests: 400/413, a reason, nothing written ---------------------------------

GOOD = {"reservation_id": "r1", "section_id": "sec", "customer_id": "c1", "seats": 2}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{nope", "JSON is malformed"),
        (b'{"reservation_id": "r1", "section_id": "sec", "customer_id": "c1", "seats": 2',
         "truncated"),
        (b"[]", "Expected `object`, got `array`"),
        (json.dumps({**GOOD, "seats": "two"}).encode(), "Expected `int`, got `str`"),
        (json.dumps({**GOOD, "seats": 2.5}).encode(), "Expected `int`, got `float`"),
        (json.dumps({**GOOD, "seats": True}).encode(), "Expected `int`, got `bool`"),
        (json.dumps({**GOOD, "seats": None}).encode(), "Expected `int`, got `null`"),
        (json.dumps({**GOOD, "customer_id": 5}).encode(), "Expected `str`, got `int`"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "seats"}).encode(),
         "missing required field `seats`"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "section_id"}).encode(),
         "missing required field `section_id`"),
        (json.dumps({**GOOD, "reservation_id": "r 1"}).encode(), "matching regex"),
        (json.dumps({**GOOD, "reservation_id": "r/1"}).encode(), "matching regex"),
        (json.dumps({**GOOD, "customer_id": ""}).encode(), "length >= 1"),
        (json.dumps({**GOOD, "reservation_id": "r" * 65}).encode(), "length <= 64"),
        (json.dumps({**GOOD, "seats": 0}).encode(), "Expected `int` >= 1"),
        (json.dumps({**GOOD, "seats": MAX_SEATS_PER_RESERVATION + 1}).encode(),
         f"Expected `int` <= {MAX_SEATS_PER_RESERVATION}"),
        (b"", '"detail"'),
    ],
    ids=["not-json", "truncated", "array", "seats-word", "seats-float", "seats-bool",
         "seats-null", "customer-int", "no-seats", "no-section", "id-space", "id-slash",
         "id-empty", "id-65-chars", "seats-0", "seats-9", "empty-body"],
)  # fmt: skip
async def test_a_malformed_reservation_is_refused_with_a_reason_and_writes_nothing(
    service: Service, body: bytes, says: str
) -> None:
    await service.open("sec", stock=50)
    head = await service.head()

    answer = await service.http.post(
        "/reservations", content=body, headers={"content-type": "application/json"}
    )

    assert answer.status_code == 400, answer.text
    assert says in _detail(answer)
    assert await service.head() == head
    section = await service.sale.app.get(Section, "sec")
    assert (section.held, section.sold) == (0, 0)


async def test_a_malformed_section_is_refused_and_writes_nothing(service: Service) -> None:
    head = await service.head()

    answer = await service.http.post("/sections", json={
        "section_id": "s1", "sale_id": "sale-1", "name": "A", "stock": -1})  # fmt: skip

    assert answer.status_code == 400, answer.text
    assert "Expected `int` >= 0" in _detail(answer)
    assert await service.head() == head


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_max_body_is_refused_with_413_and_writes_nothing(
    service: Service, chunked: bool
) -> None:
    await service.open("sec", stock=50)
    head = await service.head()
    # A valid command, padded past the limit: refused for its size, not its content.
    body = json.dumps({**GOOD, "padding": " " * MAX_BODY}).encode()
    assert len(body) > MAX_BODY

    async def in_pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    answer = await service.http.post(
        "/reservations",
        content=in_pieces() if chunked else body,
        headers={"content-type": "application/json"},
    )

    assert answer.status_code == 413, answer.text
    assert "Too Large" in _detail(answer)
    assert await service.head() == head


async def test_a_body_just_under_max_body_is_accepted(service: Service) -> None:
    await service.open("sec", stock=50)
    body = json.dumps({**GOOD, "padding": ""}).encode()
    body = body.replace(b'"padding": ""', b'"padding": "' + b" " * (MAX_BODY - len(body)) + b'"')
    assert len(body) == MAX_BODY

    answer = await service.http.post(
        "/reservations", content=body, headers={"content-type": "application/json"}
    )

    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("length", [0, 201])
async def test_an_idempotency_key_outside_1_to_200_characters_is_refused(
    service: Service, length: int
) -> None:
    await service.open("sec", stock=50)
    head = await service.head()

    answer = await service.reserve("r1", "sec", 2, key="k" * length)

    assert answer.status_code == 400, answer.text
    assert "Idempotency-Key must be 1..200 characters" in _detail(answer)
    assert await service.head() == head
    assert (await service.sale.app.get(Section, "sec")).held == 0


async def test_an_idempotency_key_of_200_characters_is_accepted(service: Service) -> None:
    await service.open("sec", stock=50)

    answer = await service.reserve("r1", "sec", 2, key="k" * 200)

    assert answer.status_code == 201, answer.text


async def test_a_number_sent_as_a_string_is_a_wrong_type_and_writes_nothing(
    service: Service,
) -> None:
    await service.open("sec", stock=50)
    head = await service.head()

    answer = await service.http.post("/reservations", json={**GOOD, "seats": "2"})

    assert answer.status_code == 400, answer.text
    assert await service.head() == head


@pytest.mark.parametrize(
    ("reservation_id", "says"),
    [("bad%20id", "matching regex"), ("x" * 65, "length <= 64")],
    ids=["pattern", "length"],
)
async def test_a_payment_for_an_id_breaking_the_rules_is_refused_and_writes_nothing(
    service: Service, reservation_id: str, says: str
) -> None:
    head = await service.head()

    answer = await service.http.post(f"/reservations/{reservation_id}/payment")

    assert answer.status_code == 400, answer.text
    assert says in _detail(answer)
    assert await service.head() == head


# -- refusals by the domain -------------------------------------------------------------------


async def test_reserving_more_seats_than_are_left_is_sold_out_and_changes_nothing(
    service: Service,
) -> None:
    await service.open("sec", stock=5)
    assert (await service.reserve("r1", "sec", 3)).status_code == 201
    head = await service.head()

    answer = await service.reserve("r2", "sec", 3)

    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["error"] == "sold_out"
    assert "2 seats left" in body["detail"]
    assert "3 asked for" in body["detail"]
    assert await service.head() == head
    section = await service.sale.app.get(Section, "sec")
    assert (section.stock, section.held, section.sold) == (5, 3, 0)
    assert (await service.http.get("/reservations/r2")).status_code == 404


async def test_reserving_in_a_section_that_does_not_exist_is_404(service: Service) -> None:
    head = await service.head()

    answer = await service.reserve("r1", "nowhere", 1)

    assert answer.status_code == 404, answer.text
    assert answer.json()["error"] == "not_found"
    assert "nowhere" in answer.json()["detail"]
    assert await service.head() == head


async def test_an_unknown_reservation_is_404_to_read_and_to_pay(service: Service) -> None:
    head = await service.head()

    assert (await service.http.get("/reservations/ghost")).status_code == 404
    paid = await service.http.post("/reservations/ghost/payment")

    assert paid.status_code == 404, paid.text
    assert paid.json()["error"] == "not_found"
    assert await service.head() == head


async def test_reusing_a_reservation_id_without_a_key_is_a_conflict_and_writes_nothing(
    service: Service,
) -> None:
    await service.open("sec", stock=10)
    assert (await service.reserve("r1", "sec", 2)).status_code == 201
    head = await service.head()

    answer = await service.reserve("r1", "sec", 3, customer_id="someone-else")

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "conflict"
    assert await service.head() == head
    # The section's hold in the refused unit was not kept (in the store nor in memory).
    section = await service.sale.app.get(Section, "sec")
    assert (section.held, section.available) == (2, 8)
    reservation = await service.reservation("r1")
    assert (reservation["customer_id"], reservation["seats"]) == ("c1", 2)
    # ... and the next buyer sees the true stock.
    assert (await service.reserve("r2", "sec", 8)).status_code == 201


# -- payment -----------------------------------------------------------------------------------


async def test_paying_an_expired_reservation_is_refused_and_charges_nothing(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    async with serving(tmp_path, hold_seconds=0.2) as service:
        await service.open("sec", stock=5)
        assert (await service.reserve("late", "sec", 2)).status_code == 201
        await until(lambda: _state_is(service, "late", "expired"), "the reservation to expire")
        head = await service.head()

        answer = await service.http.post("/reservations/late/payment")

        assert answer.status_code == 409, answer.text
        assert answer.json()["error"] == "refused"
        assert "expired" in answer.json()["detail"]
        assert await service.head() == head
        assert service.sale.gateway is not None
        assert "late" not in await service.sale.gateway.ledger()
        section = await service.sale.app.get(Section, "sec")
        assert (section.held, section.sold, section.available) == (0, 0, 5)


async def _state_is(service: Service, reservation_id: str, state: str) -> bool:
    found: str = (await service.reservation(reservation_id))["state"]
    return found == state


async def test_a_payment_is_charged_once_confirmed_by_mail_and_a_second_one_refused(
    service: Service,
) -> None:
    await service.open("sec", stock=10, price_cents=2500)
    assert (await service.reserve("r1", "sec", 3)).status_code == 201

    answer = await service.http.post("/reservations/r1/payment")

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"reservation_id": "r1", "payment": "requested"}
    await until(lambda: _state_is(service, "r1", "paid"), "the reservation to be paid")
    reservation = await service.reservation("r1")
    assert (reservation["payment"], reservation["amount_cents"]) == ("charged", 3 * 2500)
    gateway, mailer = service.sale.gateway, service.sale.mailer
    assert gateway is not None and mailer is not None
    ledger = await gateway.ledger()
    assert list(ledger) == ["r1"]
    charge_id, amount, state = ledger["r1"]
    assert (amount, state) == (3 * 2500, "charged")
    # The reservation records the charge the gateway made.
    paid = [s.event for s in await service.sale.app.store.read_stream("r1")][-1]
    assert getattr(paid, "charge_id", None) == charge_id
    section = await service.sale.app.get(Section, "sec")
    assert (section.held, section.sold) == (0, 3)
    assert await until(mailer.sent, "the confirmation e-mail") == [("confirmation", "r1")]

    head = await service.head()
    again = await service.http.post("/reservations/r1/payment")

    assert again.status_code == 409, again.text
    assert again.json()["error"] == "refused"
    assert "paid" in again.json()["detail"]
    assert await service.head() == head
    assert await gateway.ledger() == ledger


async def test_a_second_payment_request_while_one_is_under_way_is_refused(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    async with serving(tmp_path, payment_latency=0.6) as service:  # 0.3 .. 0.9 s a charge
        await service.open("sec", stock=10)
        assert (await service.reserve("r1", "sec", 1)).status_code == 201
        assert (await service.http.post("/reservations/r1/payment")).status_code == 202

        again = await service.http.post("/reservations/r1/payment")

        assert again.status_code == 409, again.text
        assert "already under way" in again.json()["detail"]
        await until(lambda: _state_is(service, "r1", "paid"), "the reservation to be paid")


async def test_a_declined_card_leaves_the_reservation_held_and_charges_nothing(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    async with serving(tmp_path, decline_rate=1.0) as service:
        await service.open("sec", stock=10)
        assert (await service.reserve("r1", "sec", 2)).status_code == 201

        assert (await service.http.post("/reservations/r1/payment")).status_code == 202

        async def declined() -> bool:
            payment: str = (await service.reservation("r1"))["payment"]
            return payment == "declined"

        await until(declined, "the payment to be declined")
        assert (await service.reservation("r1"))["state"] == "held"
        assert service.sale.gateway is not None
        assert await service.sale.gateway.ledger() == {}
        section = await service.sale.app.get(Section, "sec")
        assert (section.held, section.sold) == (2, 0)


async def test_a_charge_that_lands_after_the_reservation_expired_is_refunded(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    """The payment worker's path, run by hand: the buyer asked to pay in time, the deadline
    passed while the charge was on its way, so the charge goes through but Pay is refused.
    The money must go back."""
    settings = _settings(tmp_path)
    sale = FlashSale(settings)  # not started: no worker races the one run here
    async with sale.app, read_store_from_url(settings.read_store_url()) as read_store:
        sale.gateway = PaymentGateway(read_store, latency=0.0, failure_rate=0.0,
                                      decline_rate=0.0)  # fmt: skip
        await sale.gateway.ensure()
        await sale.app.handle(OpenSection(section_id="sec", sale_id="sale-1", name="A",
                                          stock=5, price_cents=1000))  # fmt: skip
        await sale.app.handle(Reserve(reservation_id="r1", section_id="sec",
                                      customer_id="c1", seats=2))  # fmt: skip
        await sale.app.handle(RequestPayment(reservation_id="r1"))
        await sale.app.handle(Expire(reservation_id="r1"))
        stored = next(
            s for s in await sale.app.store.read_stream("r1")
            if isinstance(s.event, PaymentRequested)
        )  # fmt: skip
        ctx = MessageContext(Delivery(message_for(stored, b"", "events"), attempt=1),
                             stored.event, None)  # fmt: skip

        await sale._on_payment(ctx)

        ledger = await sale.gateway.ledger()
        assert {rid: (amount, state) for rid, (_, amount, state) in ledger.items()} == {
            "r1": (2000, "refunded")
        }
        reservation = await sale.app.get(Reservation, "r1")
        assert (reservation.state, reservation.payment) == ("expired", "requested")
        section = await sale.app.get(Section, "sec")
        assert (section.held, section.sold, section.available) == (0, 0, 5)

        # Delivered again (the worker retries): still one charge, still refunded.
        await sale._on_payment(ctx)
        assert await sale.gateway.ledger() == ledger


# -- idempotency ---------------------------------------------------------------------------------


async def _placed_once(service: Service, reservation_id: str, section_id: str) -> None:
    """One ReservationPlaced in the reservation's stream, one SeatsHeld for it in the
    section's."""
    placed = [s for s in await service.sale.app.store.read_stream(reservation_id)
              if isinstance(s.event, ReservationPlaced)]  # fmt: skip
    assert len(placed) == 1
    held = [
        s
        for s in await service.sale.app.store.read_stream(section_id)
        if isinstance(s.event, SeatsHeld) and s.event.reservation_id == reservation_id
    ]
    assert len(held) == 1


async def test_a_reservation_repeated_with_its_idempotency_key_answers_the_same_once(
    service: Service,
) -> None:
    await service.open("sec", stock=10)

    first = await service.reserve("r1", "sec", 3, key="key-1")
    head = await service.head()
    again = await service.reserve("r1", "sec", 3, key="key-1")

    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert first.headers["obelisk-position"] == again.headers["obelisk-position"]
    assert await service.head() == head
    assert (await service.sale.app.get(Section, "sec")).held == 3
    await _placed_once(service, "r1", "sec")


async def test_concurrent_repeats_of_one_keyed_reservation_reserve_once(
    service: Service,
) -> None:
    await service.open("sec", stock=50)

    answers = await asyncio.gather(
        *(service.reserve("r1", "sec", 3, key="key-1") for _ in range(8))
    )

    assert {(a.status_code, a.content) for a in answers} == {
        (201, b'{"reservation_id":"r1","seats":3}')
    }
    assert len({a.headers["obelisk-position"] for a in answers}) == 1
    assert (await service.sale.app.get(Section, "sec")).held == 3
    await _placed_once(service, "r1", "sec")


async def test_concurrent_repeats_of_a_keyed_reservation_for_the_last_seats_all_succeed(
    service: Service,
) -> None:
    # Through the service's own Application (the one the HTTP handler calls): the repeats
    # must overlap for the race, which HTTP on one loop does not reliably give.
    await service.open("sec", stock=2)
    command = Reserve(reservation_id="r1", section_id="sec", customer_id="c1", seats=2)

    answers = await asyncio.gather(
        *(service.sale.app.handle(command, idempotency_key="key-1") for _ in range(3)),
        return_exceptions=True,
    )

    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert len(set(answers)) == 1
    await _placed_once(service, "r1", "sec")


async def test_a_key_reused_with_another_body_does_not_claim_what_was_not_done(
    service: Service,
) -> None:
    await service.open("sec", stock=10)
    first = await service.reserve("r1", "sec", 2, key="key-1")
    assert first.status_code == 201

    other = await service.reserve("r1", "sec", 1, key="key-1")

    assert (other.status_code, other.content) == (first.status_code, first.content) or (
        other.status_code in (409, 422)
    ), other.text


async def test_a_key_reused_to_open_another_section_is_422_and_opens_nothing(
    service: Service,
) -> None:
    await service.open("sec", stock=10)
    first = await service.http.post("/sections", headers={"idempotency-key": "open-1"}, json={
        "section_id": "s1", "sale_id": "sale-1", "name": "A", "stock": 5})  # fmt: skip
    assert first.status_code == 201, first.text

    other = await service.http.post("/sections", headers={"idempotency-key": "open-1"}, json={
        "section_id": "s2", "sale_id": "sale-1", "name": "B", "stock": 5})  # fmt: skip

    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in _detail(other)
    with pytest.raises(AggregateNotFound):
        await service.sale.app.get(Section, "s2")


async def test_a_payment_key_reused_for_another_reservation_is_422(service: Service) -> None:
    await service.open("sec", stock=10)
    await service.reserve("r1", "sec", 1)
    await service.reserve("r2", "sec", 1)
    headers = {"idempotency-key": "pay-1"}
    assert (await service.http.post("/reservations/r1/payment", headers=headers)).status_code == 202

    other = await service.http.post("/reservations/r2/payment", headers=headers)

    assert other.status_code == 422, other.text
    assert (await service.sale.app.get(Reservation, "r2")).payment == "none"


# -- cached availability -------------------------------------------------------------------------


async def test_section_availability_is_cached_revalidated_with_304_and_changes_after_a_reservation(
    reader: Service,
) -> None:
    position = await reader.open("sec", stock=10, price_cents=1500)
    await reader.caught_up(AVAILABILITY, position)

    first = await reader.http.get("/sections/sec/availability")

    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "public, max-age=1"
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert first.json() == {"section_id": "sec", "sale_id": "sale-1", "name": "sec",
                            "stock": 10, "held": 0, "sold": 0, "available": 10,
                            "price_cents": 1500}  # fmt: skip
    loads = reader.sale.cache.stats.loads

    same = await reader.http.get("/sections/sec/availability", headers={"if-none-match": etag})

    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert same.headers["cache-control"] == "public, max-age=1"
    assert reader.sale.cache.stats.loads == loads  # answered without a query
    again = await reader.http.get("/sections/sec/availability")
    assert (again.status_code, again.content) == (200, first.content)
    assert again.headers["etag"] == etag
    assert reader.sale.cache.stats.loads == loads

    reserved = await reader.reserve("r1", "sec", 4)
    await reader.caught_up(AVAILABILITY, int(reserved.headers["obelisk-position"]))
    changed = await reader.http.get("/sections/sec/availability", headers={"if-none-match": etag})

    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != etag
    assert (changed.json()["held"], changed.json()["available"]) == (4, 6)
    assert reader.sale.cache.stats.loads == loads + 1


async def test_availability_of_an_unknown_section_is_404(reader: Service) -> None:
    answer = await reader.http.get("/sections/nowhere/availability")

    assert answer.status_code == 404, answer.text
    assert "no such section" in _detail(answer)


async def test_if_none_match_star_on_an_unknown_section_is_404(reader: Service) -> None:
    answer = await reader.http.get("/sections/nowhere/availability", headers={"if-none-match": "*"})

    assert answer.status_code == 404


async def test_sale_availability_is_cached_revalidated_with_304_and_changes_after_a_reservation(
    reader: Service,
) -> None:
    await reader.open("b", stock=10, sale_id="sale-9")
    await reader.open("c", stock=5, sale_id="other-sale")
    position = await reader.open("a", stock=20, sale_id="sale-9")
    await reader.caught_up(AVAILABILITY, position)

    first = await reader.http.get("/sales/sale-9/availability")

    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "public, max-age=1"
    etag = first.headers["etag"]
    assert [(s["section_id"], s["stock"], s["held"]) for s in first.json()] == [
        ("a", 20, 0), ("b", 10, 0)
    ]  # fmt: skip
    loads = reader.sale.cache.stats.loads

    same = await reader.http.get("/sales/sale-9/availability", headers={"if-none-match": etag})

    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert reader.sale.cache.stats.loads == loads

    # A reservation in another sale does not change this sale's answer.
    other = await reader.reserve("r0", "c", 1)
    await reader.caught_up(AVAILABILITY, int(other.headers["obelisk-position"]))
    unchanged = await reader.http.get("/sales/sale-9/availability", headers={"if-none-match": etag})
    assert unchanged.status_code == 304

    reserved = await reader.reserve("r1", "b", 2)
    await reader.caught_up(AVAILABILITY, int(reserved.headers["obelisk-position"]))
    changed = await reader.http.get("/sales/sale-9/availability", headers={"if-none-match": etag})

    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != etag
    assert [(s["section_id"], s["held"], s["available"]) for s in changed.json()] == [
        ("a", 0, 20), ("b", 2, 8)
    ]  # fmt: skip


async def test_availability_of_a_sale_without_sections_is_404(reader: Service) -> None:
    answer = await reader.http.get("/sales/no-such-sale/availability")

    assert answer.status_code == 404, answer.text
    assert "no such sale" in _detail(answer)


@pytest.mark.parametrize("path", ["/sections/{}/availability", "/sales/{}/availability"])
@pytest.mark.parametrize("ident", ["x" * 65, "a%20b", "x" * 20_000], ids=["65", "space", "20k"])
async def test_availability_of_an_id_breaking_the_rules_is_400_and_caches_nothing(
    reader: Service, path: str, ident: str
) -> None:
    # A client cannot fill the caches with keys of things that cannot exist.
    before = len(reader.sale.cache)

    answer = await reader.http.get(path.format(ident))

    assert answer.status_code == 400, answer.text
    assert len(reader.sale.cache) == before


# -- orders: keyset pages -------------------------------------------------------------------------


async def test_a_customers_orders_come_in_keyset_pages_each_once_in_order(
    service: Service,
) -> None:
    await service.open("sec", stock=100)
    ids = [f"r{n:02d}" for n in (7, 3, 11, 1, 9, 4, 6)]  # placed out of order
    position = 0
    for rid in ids:
        answer = await service.reserve(rid, "sec", 1, customer_id="alice")
        assert answer.status_code == 201, answer.text
        position = int(answer.headers["obelisk-position"])
    for n in range(3):  # someone else's, between alice's in id order
        answer = await service.reserve(f"r{n:02d}x", "sec", 1, customer_id="bob")
        position = int(answer.headers["obelisk-position"])
    await service.caught_up(ORDERS, position)

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": cursor} if cursor else {})
        answer = await service.http.get("/customers/alice/orders", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append(page["orders"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor never ends"

    assert [len(p) for p in pages] == [3, 3, 1]
    rows = [row for page in pages for row in page]
    assert [row["reservation_id"] for row in rows] == sorted(ids)
    assert {row["customer_id"] for row in rows} == {"alice"}
    assert rows[0] == {
        "reservation_id": "r01", "customer_id": "alice", "section_id": "sec", "seats": 1,
        "amount_cents": 2500, "state": "held", "payment": "none"}  # fmt: skip


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("after=garbage", "malformed page cursor"),
        ("after=" + "A" * 40, "cursor"),
        ("limit=0", "limit must be within 1..100"),
        ("limit=101", "limit must be within 1..100"),
        ("limit=-3", "limit must be within 1..100"),
        ("limit=many", "Expected `int`"),
    ],
)
async def test_a_bad_orders_query_is_400(service: Service, query: str, says: str) -> None:
    answer = await service.http.get(f"/customers/alice/orders?{query}")

    assert answer.status_code == 400, answer.text
    assert says in _detail(answer)


async def test_the_orders_of_a_customer_without_any_are_an_empty_last_page(
    service: Service,
) -> None:
    answer = await service.http.get("/customers/nobody/orders")

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"orders": [], "next_cursor": None}


# -- operations ---------------------------------------------------------------------------------


async def test_health_metrics_and_dashboard_answer(service: Service) -> None:
    position = await service.open("sec", stock=10)
    await service.reserve("r1", "sec", 1)
    await service.caught_up(AVAILABILITY, position)

    health = await service.http.get("/health")
    assert health.status_code == 200, health.text
    assert health.json() == {"ok": True, "failures": []}

    metrics = await service.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    names = {line.split("{")[0].split(" ")[0] for line in metrics.text.splitlines()
             if line and not line.startswith("#")}  # fmt: skip
    assert any(name.startswith("obelisk_") for name in names), sorted(names)[:20]
    assert 'command="flashsale.Reserve"' in metrics.text

    page = await service.http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.lstrip().lower().startswith("<!doctype html")

    stats = await service.http.get("/dashboard/stats")
    assert stats.status_code == 200, stats.text
    data = stats.json()
    assert data.keys() >= {"time", "endpoints", "latency", "projections", "cache", "sale"}
    assert {e["name"] for e in data["endpoints"]} >= {"POST /sections", "POST /reservations"}
    assert len(data["projections"]) == len(service.sale.runners)
    assert data["cache"].keys() >= {"hits", "misses", "hit_ratio"}
    assert data["sale"]["stock"] == 10


# -- many buyers at once --------------------------------------------------------------------------


async def test_200_concurrent_reservations_never_oversell_a_section(service: Service) -> None:
    stock = {"s-a": 20, "s-b": 20, "s-c": 20}
    for section_id, seats in stock.items():
        await service.open(section_id, stock=seats, sale_id="rush")
    rng = random.Random(42)
    plan = [(f"r{n}", rng.choice(sorted(stock)), rng.randint(1, 4)) for n in range(200)]

    answers = await asyncio.gather(
        *(service.reserve(rid, section_id, seats, customer_id=f"c{n % 23}")
          for n, (rid, section_id, seats) in enumerate(plan))
    )  # fmt: skip

    statuses = Counter(a.status_code for a in answers)
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[409] > 0  # demand (~500 seats) is far beyond the stock (60)
    refused = [a.json() for a in answers if a.status_code == 409]
    assert {r["error"] for r in refused} == {"sold_out"}
    granted: Counter[str] = Counter()
    last = 0
    for (_, section_id, seats), answer in zip(plan, answers, strict=True):
        if answer.status_code == 201:
            granted[section_id] += seats
            last = max(last, int(answer.headers["obelisk-position"]))
    for section_id, seats in stock.items():
        section = await service.sale.app.get(Section, section_id)
        assert granted[section_id] == section.held <= seats, section_id
        assert section.available >= 0
    # The read side agrees once it has caught up.
    await service.caught_up(AVAILABILITY, last)
    shown = (await service.http.get("/sales/rush/availability")).json()
    assert {s["section_id"]: s["held"] for s in shown} == {s: granted[s] for s in stock}


# -- settings from the environment ---------------------------------------------------------------


def test_settings_come_from_obelisk_and_flashsale_variables_and_bad_ones_are_refused() -> None:
    settings = Settings.from_env({
        "OBELISK_STORE": "sqlite:///a.db", "FLASHSALE_STORE": "sqlite:///other.db",
        "FLASHSALE_HOLD_SECONDS": "2.5", "FLASHSALE_TUNE_GC": "0",
    })  # fmt: skip
    # Where things are comes from OBELISK_* only (what `obelisk serve --store` sets).
    assert (settings.store, settings.hold_seconds, settings.tune_gc) == (
        "sqlite:///a.db", 2.5, False,
    )  # fmt: skip
    for name, value in (("FLASHSALE_DECLINE_RATE", "1.5"), ("FLASHSALE_HOLD_SECONDS", "-1"),
                        ("FLASHSALE_TUNE_GC", "maybe")):  # fmt: skip
        with pytest.raises(ValueError, match="flash sale settings"):
            Settings.from_env({name: value})
