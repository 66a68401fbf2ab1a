"""The flash sale over HTTP (Litestar on uvicorn).

Commands are posted as their msgspec structs — Litestar decodes and checks a body against
the struct (types, bounds, patterns) before the handler runs, so a malformed request is a
400 that wrote nothing. Bodies are capped at ``MAX_BODY`` bytes (413 beyond).

=======================================  =================================================
``POST /sections``                       open a section (``OpenSection``) — 201
``POST /reservations``                   reserve seats (``Reserve``) — 201, or 409 sold out
``POST /reservations/{id}/payment``      ask for payment — 202; 409 if expired or paid
``GET  /reservations/{id}``              the reservation (from its aggregate)
``GET  /sections/{id}/availability``     cached; ETag / If-None-Match (304) / Cache-Control
``GET  /sales/{id}/availability``        every section of a sale; cached the same way
``GET  /customers/{id}/orders``          keyset pages: ``?limit=&after=<next_cursor>``
``GET  /dashboard``, ``/dashboard/stats`` the live dashboard and its data
``GET  /metrics``                        Prometheus metrics
``GET  /health``                         200 while every background part runs
=======================================  =================================================

``Idempotency-Key`` on a POST makes a retried request harmless: the command runs once and
a repeat answers what the first did (the events' ids derive from the key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.types import ASGIApp, Receive, Scope, Send

from examples.flashsale.dashboard import DASHBOARD_HTML
from examples.flashsale.domain import (
    OpenSection,
    RequestPayment,
    Reservation,
    Reserve,
    Section,
    SoldOut,
    valid_id,
)
from examples.flashsale.service import FlashSale, Settings
from obelisk import DomainError
from obelisk.caching import Cached, cache_headers, not_modified
from obelisk.domain.values import check_json_nesting
from obelisk.errors import (
    AggregateNotFound,
    ConcurrencyError,
    IdempotencyConflict,
    StoreUnavailable,
    ValidationError,
)

__all__ = ["MAX_BODY", "create_app"]

MAX_BODY = 4096  # bytes: every command fits in a few hundred
MAX_CURSOR = 256  # characters: an orders cursor holds one id (at most 64), base64 JSON

C = TypeVar("C")
_log = logging.getLogger("examples.flashsale.http")


def _sale(state: State) -> FlashSale:
    sale: FlashSale = state.sale
    return sale


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise HTTPException(status_code=400, detail="Idempotency-Key must be 1..200 characters")
    return key


def _created(body: dict[str, Any], position: int | None, status: int = 201) -> Response[Any]:
    headers = {"obelisk-position": str(position)} if position is not None else {}
    return Response(body, status_code=status, headers=headers)


# Bodies are decoded strictly: "2" is not a number of seats (Litestar's own decoding would
# coerce it). msgspec's message names the field and what was wrong with it.
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (OpenSection, Reserve)
}


async def _command(request: Request[Any, Any, Any], cls: type[C]) -> C:
    body = await request.body()  # over MAX_BODY: 413 before anything is decoded
    try:
        # msgspec recurses once per level, even into a field it skips: 1,000 brackets
        # (2 KB) would end in a RecursionError, a 500. Refused first, like any malformed body.
        check_json_nesting(body, "the body")
        command: C = _DECODERS[cls].decode(body)
    except (msgspec.DecodeError, ValidationError, RecursionError) as exc:
        # malformed JSON, a wrong type, a missing field, nested too deeply
        why = "the body is nested too deeply" if isinstance(exc, RecursionError) else exc
        raise HTTPException(status_code=400, detail=f"invalid {cls.__name__}: {why}") from None
    return command


@post("/sections")
async def open_section(request: Request[Any, Any, Any], state: State) -> Any:
    data = await _command(request, OpenSection)
    key = _idempotency_key(request)
    sale = _sale(state)
    position = await sale.app.handle(data, idempotency_key=key)
    if key is not None:
        await _made_by(sale, Section, data.section_id, data, ("sale_id", "stock", "price_cents"))
    return _created({"section_id": data.section_id}, position)


async def _made_by(
    sale: FlashSale, cls: type[Any], ident: str, data: Any, fields: tuple[str, ...]
) -> None:
    """After a keyed command: the aggregate its key's events made must be this request's.
    A repeat answers what the first request did; a key reused for another request (other
    seats, another section) is refused rather than answered as if done."""
    try:
        done = await sale.app.get(cls, ident)
    except AggregateNotFound:
        _key_reused()
    if any(getattr(done, name) != getattr(data, name) for name in fields):
        _key_reused()


def _key_reused() -> NoReturn:
    # The key's events exist, but they are not this request's: answering as if it had been
    # done would be a lie (the first request's effect is not this one's).
    raise HTTPException(status_code=422, detail="this Idempotency-Key was used for another request")


@post("/reservations")
async def reserve(request: Request[Any, Any, Any], state: State) -> Any:
    data = await _command(request, Reserve)
    key = _idempotency_key(request)
    sale = _sale(state)
    position = await sale.app.handle(data, idempotency_key=key)
    if key is not None:
        fields = ("section_id", "customer_id", "seats")
        await _made_by(sale, Reservation, data.reservation_id, data, fields)
    return _created({"reservation_id": data.reservation_id, "seats": data.seats}, position)


@post("/reservations/{reservation_id:str}/payment")
async def request_payment(
    reservation_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> Any:
    command = RequestPayment(reservation_id=reservation_id)
    sale = _sale(state)
    key = _idempotency_key(request)
    position = await sale.app.handle(command, idempotency_key=key)
    if key is not None and (await sale.app.get(Reservation, reservation_id)).payment == "none":
        _key_reused()  # the key's payment request was another reservation's
    return _created({"reservation_id": reservation_id, "payment": "requested"}, position, 202)


@get("/reservations/{reservation_id:str}")
async def reservation(reservation_id: FromPath[str], state: State) -> dict[str, Any]:
    found = await _sale(state).app.get(Reservation, reservation_id)
    return {"reservation_id": found.id, "section_id": found.section_id,
            "customer_id": found.customer_id, "seats": found.seats,
            "amount_cents": found.amount_cents, "state": found.state,
            "payment": found.payment}  # fmt: skip


def _check_id(ident: str) -> None:
    # Ids in paths follow the commands' rule: a client cannot fill the caches with
    # megabyte-long keys of things that cannot exist.
    if not valid_id(ident):
        raise HTTPException(status_code=400, detail="ids are 1-64 of A-Z a-z 0-9 _ . : -")


def _cached_response(
    request: Request[Any, Any, Any], cached: Cached[Any], max_age: int, what: str = "section"
) -> Any:
    if cached.value is None:  # before validators: "*" matches only what exists
        raise HTTPException(status_code=404, detail=f"no such {what}")
    tag = cached.etag
    headers = cache_headers(tag, max_age=max_age)
    if not_modified(request.headers, tag):
        return Response(b"", status_code=304, headers=headers)
    return Response(cached.value, media_type=MediaType.JSON, headers=headers)


@get("/sections/{section_id:str}/availability")
async def section_availability(
    section_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> Any:
    _check_id(section_id)
    sale = _sale(state)
    # A 304 straight from the versions, when the client's copy is current: no query.
    peeked = sale.cache.peek(f"section:{section_id}")
    if (
        peeked is not None
        and peeked.value is not None
        and not_modified(request.headers, peeked.etag)
    ):
        sale.cache.stats.hits += 1
        return Response(b"", status_code=304, headers=cache_headers(peeked.etag,
                        max_age=sale.settings.cache_max_age))  # fmt: skip
    cached = await sale.availability(section_id)
    return _cached_response(request, cached, sale.settings.cache_max_age)


@get("/sales/{sale_id:str}/availability")
async def sale_availability(
    sale_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> Any:
    _check_id(sale_id)
    sale = _sale(state)
    cached = await sale.sale_availability(sale_id)
    return _cached_response(request, cached, sale.settings.cache_max_age, "sale")


@get("/customers/{customer_id:str}/orders")
async def customer_orders(
    customer_id: FromPath[str],
    state: State,
    limit: FromQuery[int] = 20,
    after: FromQuery[str | None] = None,
) -> dict[str, Any]:
    _check_id(customer_id)  # customer ids follow the commands' rule too
    if not 1 <= limit <= 100:
        raise HTTPException(status_code=400, detail="limit must be within 1..100")
    if after is not None and len(after) > MAX_CURSOR:  # no cursor of this listing is longer
        # (and a longer one could nest deep enough to end its decoding in a RecursionError)
        raise ValidationError(f"malformed page cursor: over {MAX_CURSOR} characters")
    page = await _sale(state).orders(customer_id, after=after, limit=limit)
    return {"orders": page.rows, "next_cursor": page.next_cursor}


@get("/dashboard", media_type=MediaType.HTML)
async def dashboard() -> bytes:
    return DASHBOARD_HTML


@get("/dashboard/stats")
async def dashboard_stats(state: State) -> dict[str, Any]:
    return await _sale(state).dashboard_stats()


@get("/metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
async def metrics(state: State) -> bytes:
    sale = _sale(state)
    if sale.metrics is None:
        raise HTTPException(status_code=404, detail="prometheus-client is not installed")
    from prometheus_client import generate_latest

    data: bytes = generate_latest(sale.metrics.registry)
    return data


@get("/health")
async def health(state: State) -> Response[Any]:
    failures = _sale(state).failures()
    return Response({"ok": not failures, "failures": failures},
                    status_code=503 if failures else 200)  # fmt: skip


# -- errors ------------------------------------------------------------------------------


def _error(status: int, kind: str, exc: BaseException) -> Response[Any]:
    return Response({"error": kind, "detail": str(exc)}, status_code=status)


def _sold_out(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(409, "sold_out", exc)


def _refused(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(409, "refused", exc)


def _conflict(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(409, "conflict", exc)


def _not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(404, "not_found", exc)


def _invalid(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error(400, "invalid", exc)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Every 5xx leaves its traceback in the log: this one is expected (the store is down
    # or read-only) and the client is told to retry, so a warning.
    _log.warning("%s %s: 503, the store is unavailable", request.method, request.url.path,
                 exc_info=exc)  # fmt: skip
    return Response({"error": "unavailable", "detail": str(exc)}, status_code=503,
                    headers={"retry-after": "1"})  # fmt: skip


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Litestar answers an unhandled exception with a bare 500 and logs it only in debug
    # mode: this handler (for any exception no other handler takes) logs the traceback at
    # ERROR, and the client learns nothing of the internals.
    _log.error("%s %s: 500, unhandled %s", request.method, request.url.path,
               type(exc).__name__, exc_info=exc)  # fmt: skip
    return Response({"error": "internal", "detail": "Internal Server Error"}, status_code=500)


# -- timing: every request's latency by endpoint, for the dashboard ------------------------


def _timing(app: ASGIApp) -> ASGIApp:
    async def timed(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await app(scope, receive, send)
        finally:
            state = scope["app"].state
            sale: FlashSale | None = getattr(state, "sale", None)
            if sale is not None:
                name = f"{scope.get('method', 'GET')} {scope.get('path_template', '?')}"
                sale.requests.record(name, time.perf_counter() - started)

    return timed


def create_app(settings: Settings | None = None) -> Litestar:
    """The flash sale's Litestar application; ``settings`` default to the environment's."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        sale = FlashSale(settings if settings is not None else Settings.from_env())
        await sale.start()
        app.state.sale = sale
        try:
            yield
        finally:
            await sale.stop()

    return Litestar(
        route_handlers=[
            open_section,
            reserve,
            request_payment,
            reservation,
            section_availability,
            sale_availability,
            customer_orders,
            dashboard,
            dashboard_stats,
            metrics,
            health,
        ],
        lifespan=[lifespan],
        middleware=[_timing],
        exception_handlers={
            SoldOut: _sold_out,
            DomainError: _refused,
            ConcurrencyError: _conflict,
            IdempotencyConflict: _conflict,
            AggregateNotFound: _not_found,
            ValidationError: _invalid,
            StoreUnavailable: _unavailable,
            500: _internal,
        },
        request_max_body_size=MAX_BODY,
        openapi_config=None,
        debug=False,
    )
