"""The flash sale over real HTTP, fed hostile requests: bodies nested past the limit, ids
and cursors a client made up, odd paths and headers at the edge. Each is a 4xx that wrote
nothing, never a 500. And a 500 that does happen (a failure injected into a collaborator)
is logged with its traceback at ERROR, while the client learns nothing of it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.flashsale.service import FlashSale
from obelisk.errors import StoreUnavailable
from tests.integration.test_flashsale_http import AVAILABILITY, Service, serving

SECTION = {"section_id": "sec", "sale_id": "sale-1", "name": "sec", "stock": 5, "price_cents": 100}
RESERVATION = {"reservation_id": "r1", "section_id": "sec", "customer_id": "c1", "seats": 1}


def _with_extra(fields: dict[str, Any], depth: int) -> bytes:
    """``fields`` as a JSON object with one more field holding lists ``depth`` deep."""
    return json.dumps(fields)[:-1].encode() + b', "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.fixture(params=["litestar", "edge"])
async def service(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[Service]:
    """The service alone, and behind the edge (which sees every request first)."""
    async with serving(tmp_path, edge=request.param == "edge") as running:
        yield running


@pytest.fixture
def http_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What the HTTP layer logs. (Litestar configures the root logger when an app is
    built, which drops caplog's handler from it: the handler goes on the logger itself.)"""
    logger = logging.getLogger("examples.flashsale.http")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The HTTP layer's records at ``level`` or above, each once (caplog's handler may
    also still be on the root logger)."""
    found = {id(r): r for r in caplog.records
             if r.name == "examples.flashsale.http" and r.levelno >= level}  # fmt: skip
    return list(found.values())


@pytest.mark.parametrize(("path", "fields"), [("/sections", SECTION),
                                              ("/reservations", RESERVATION)])  # fmt: skip
async def test_a_deeply_nested_body_is_a_400_and_writes_nothing(
    service: Service, path: str, fields: dict[str, Any]
) -> None:
    if path == "/reservations":
        await service.open("sec", stock=5)
    head = await service.head()
    body = _with_extra(fields, 1000)  # about 2 KB, well under MAX_BODY

    answer = await service.http.post(path, content=body,
                                     headers={"content-type": "application/json"})  # fmt: skip

    assert answer.status_code == 400, answer.text
    # The shape of any malformed body's answer (a wrong type, bad JSON).
    assert answer.json() == {
        "status_code": 400,
        "detail": f"invalid {'OpenSection' if path == '/sections' else 'Reserve'}: "
        "the body is nested deeper than 128 levels",
    }
    assert await service.head() == head


async def test_a_body_nested_to_the_limit_is_accepted(service: Service) -> None:
    answer = await service.http.post("/sections", content=_with_extra(SECTION, 127),
                                     headers={"content-type": "application/json"})  # fmt: skip

    assert answer.status_code == 201, answer.text


MADE_UP = {  # path -> what the 400 says
    "/customers/a%00b/orders": "ids are 1-64",
    "/customers/" + "c" * 65 + "/orders": "ids are 1-64",
    "/customers/c1/orders?after=" + base64.urlsafe_b64encode(b"[" * 1000 + b"]" * 1000).decode():
        "malformed page cursor",
    "/sections/a%00b/availability": "ids are 1-64",
    "/sections/%F0%9F%92%A5/availability": "ids are 1-64",
    "/sections/%ED%A0%80/availability": "ids are 1-64",  # a surrogate, UTF-8 encoded
    "/reservations/a%00b": "stream id",
    "/reservations/" + "r" * 5000: "stream id",
}  # fmt: skip


async def test_ids_and_cursors_a_client_made_up_are_a_400(service: Service) -> None:
    answers = {path: await service.http.get(path) for path in MADE_UP}

    wrong = {path[:60]: (answer.status_code, answer.text[:200])
             for path, answer in answers.items()
             if answer.status_code != 400 or MADE_UP[path] not in answer.text}  # fmt: skip
    assert wrong == {}


ODD_PATHS = [
    "/sections/availability", "/sales//availability", "/sections/%2e%2e/availability",
    "/sections/sec/availability/availability", "/availability", "/sections/%FF/availability",
    "/reservations/%ED%A0%80/payment", "/" + "%00" * 1000,
]  # fmt: skip


async def test_odd_paths_and_methods_are_never_a_500(service: Service) -> None:
    answers = {
        (method, path): (await service.http.request(method, path)).status_code
        for method in ("GET", "HEAD", "POST", "OPTIONS", "BREW")
        for path in ODD_PATHS
    }

    assert {key: status for key, status in answers.items() if status >= 500} == {}


@pytest.mark.parametrize(
    "headers",
    [
        {"if-none-match": "\xff\xfe" * 100},
        {"if-none-match": '"' + "x" * 8000 + '"'},
        {"if-none-match": ",,,*,,"},
        {"idempotency-key": "\xff" * 10},
        {"content-type": "application/json; charset=\x7f"},
    ],
    ids=["latin-1", "8k", "commas", "key-latin-1", "odd-type"],
)
async def test_odd_headers_on_a_cached_read_and_a_command_are_never_a_500(
    service: Service, headers: dict[str, str]
) -> None:
    await service.caught_up(AVAILABILITY, await service.open("sec", stock=5))
    encoded = {name.encode(): value.encode("latin-1") for name, value in headers.items()}
    cached = await service.http.get("/sections/sec/availability")  # now the edge answers
    assert cached.status_code == 200, cached.text

    read = await service.http.get("/sections/sec/availability", headers=encoded)
    write = await service.http.post("/reservations", json=RESERVATION, headers=encoded)

    # (uvicorn itself refuses a header value with a control character: a 400 too)
    assert read.status_code < 500, read.text
    assert write.status_code < 500, write.text


async def test_an_unhandled_exception_is_a_500_logged_at_error_with_its_traceback(
    service: Service, http_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: FlashSale, section_id: str) -> Any:
        raise KeyError("the read model lost a column")

    monkeypatch.setattr(FlashSale, "availability", broken)

    answer = await service.http.get("/sections/sec/availability")

    assert answer.status_code == 500
    assert answer.json() == {"error": "internal", "detail": "Internal Server Error"}
    assert "lost a column" not in answer.text and "Traceback" not in answer.text
    logged = _logged(http_log, logging.ERROR)
    assert len(logged) == 1, http_log.records
    assert "GET /sections/sec/availability: 500, unhandled KeyError" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    trace = http_log.text
    assert "Traceback (most recent call last)" in trace and "lost a column" in trace
    assert "in broken" in trace  # the frame that raised


async def test_an_unavailable_store_is_a_503_logged_with_its_traceback(
    service: Service, http_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the disk is full")

    monkeypatch.setattr(service.sale.app, "handle", down)

    answer = await service.http.post("/sections", json=SECTION)

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    logged = _logged(http_log, logging.WARNING)
    assert len(logged) == 1 and logged[0].exc_info is not None, http_log.records
    assert "POST /sections: 503" in logged[0].getMessage()
    assert "Traceback (most recent call last)" in http_log.text
