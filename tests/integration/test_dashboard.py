"""The flash sale's live dashboard (examples/flashsale/dashboard.html) in headless Chromium.

Chromium loads the page, lets it poll its stats for a few seconds of virtual time, then takes
a screenshot; a second run beside it dumps the DOM, where each chart's ``<canvas>`` says
where its plot area is (``data-plot``) and how many samples it drew (``data-points``).

The page under test is served by the real flash-sale service (``live_service``: ``python -m
obelisk serve examples.flashsale:app`` on SQLite in a temporary folder, set up through
``FLASHSALE_*`` as ``Settings(payment_latency=0.001, mail_latency=0, payment_failure_rate=0,
mail_failure_rate=0, seed=1)``; a process of its own, as deployed — the service also tunes
its process's garbage collector at start, which the test process must not inherit), with a
load generator in a thread sending reservations, payments and availability requests (with
If-None-Match) the whole time Chromium looks. What the charts must show:

* throughput, latency, cache hit ratio: non-zero values under load, so their lines lie
  above the x-axis. Checked on pixels — enough line-coloured (saturated) pixels inside the
  plot area, its bottom edge (the x-axis) left out — and on ``data-points``;
* projection lag: what the service reports (``ProjectionRunner.known_lag``) is non-zero
  only while a runner has read the head and not yet committed its batch, a millisecond or
  two on SQLite, so most samples — usually all — are 0, drawn as lines *on* the x-axis,
  which the pixel check above leaves out. Checked on ``data-points`` (every sample plotted
  a value per projection), on pixels of the plot area *with* the x-axis rows (lines at zero
  are coloured there, the grey axis is not) and on the header naming the lag.

The control: a page whose stats answer 500 (a small stand-in server, ``_serve``) plots
nothing and says "disconnected" — both pixel checks find nothing there, so they can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from examples.flashsale.client import HttpClient, HttpError
from examples.flashsale.dashboard import DASHBOARD_HTML, DASHBOARD_PATH, STATS_PATH

from ._chromium import (
    Box,
    PlotArea,
    body_attribute,
    capture,
    chromium_path,
    coloured_pixels,
    element_text,
    plot_areas,
)

pytestmark = pytest.mark.skipif(
    chromium_path() is None and os.geteuid() != 0,
    reason="needs Chromium (apt-get install chromium; scripts/test.sh installs it as root)",
)

ROOT = Path(__file__).resolve().parents[2]  # the folder holding examples/
CHARTS = ("chart-throughput", "chart-latency", "chart-lag", "chart-cache")
ABOVE_ZERO = ("chart-throughput", "chart-latency", "chart-cache")  # non-zero under load
WAIT_MS = 8_000  # virtual ms the page runs before the screenshot: about 8 samples
NO_FIGURE = "\N{EN DASH}"  # what a header figure shows before the first sample
MIN_LINE_PIXELS = 150  # a line across a chart is ~1000 such pixels; an empty chart has 0
LOAD_CLIENTS = 8  # connections of the load generator
START_TIMEOUT = 30.0


# ---- the real service under load ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Load:
    """A load generator in a thread of its own (with its own event loop): ``LOAD_CLIENTS``
    buyers, each on one keep-alive connection, reserving a seat in the busy section, paying
    for it, and revalidating both sections' availability with If-None-Match, until stopped."""

    port: int
    sections: tuple[str, str]  # (busy: reserved in, quiet: only read)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the load generator did not stop"

    def count(self, name: str) -> int:
        return sum(n for key, n in self.statuses.items() if key.startswith(name))

    async def _run(self) -> None:
        ids = itertools.count()
        await asyncio.gather(*(self._buyer(n, ids) for n in range(LOAD_CLIENTS)))

    async def _buyer(self, n: int, ids: Iterator[int]) -> None:
        client = HttpClient("127.0.0.1", self.port, timeout=10)
        etags: dict[str, str] = {}
        busy, quiet = self.sections
        try:
            while not self._stop.is_set():
                rid = f"load-{n}-{next(ids)}"
                body = {"reservation_id": rid, "section_id": busy, "customer_id": f"c{n}",
                        "seats": 1}  # fmt: skip
                answer = await client.request("POST", "/reservations", json.dumps(body).encode())
                self._book("POST /reservations", answer.status, (201,))
                if answer.status == 201:
                    paid = await client.request("POST", f"/reservations/{rid}/payment")
                    self._book("POST payment", paid.status, (202,))
                for section in (busy, quiet):
                    tag = etags.get(section)
                    headers = {"if-none-match": tag} if tag else {}
                    path = f"/sections/{section}/availability"
                    seen = await client.request("GET", path, headers=headers)
                    self._book("GET availability", seen.status, (200, 304))
                    if "etag" in seen.headers:
                        etags[section] = seen.headers["etag"]
        except HttpError as exc:
            if not self._stop.is_set():
                self.errors.append(f"buyer {n}: {exc}")
        finally:
            await client.close()

    def _book(self, name: str, status: int, expected: tuple[int, ...]) -> None:
        key = f"{name} {status}"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status not in expected and len(self.errors) < 20:
            self.errors.append(key)


@dataclass
class LiveService:
    url: str  # the dashboard page
    port: int
    load: Load
    log: Path

    def stats(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            client = HttpClient("127.0.0.1", self.port, timeout=10)
            try:
                answer = await client.request("GET", STATS_PATH)
            finally:
                await client.close()
            assert answer.status == 200, answer
            stats: dict[str, Any] = json.loads(answer.body)
            return stats

        return asyncio.run(get())


def _start_service(folder: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``python -m obelisk serve examples.flashsale:app`` on SQLite in ``folder``."""
    port = _free_port()
    log = folder / "service.log"
    env = {**os.environ, "FLASHSALE_PAYMENT_LATENCY": "0.001", "FLASHSALE_MAIL_LATENCY": "0",
           "FLASHSALE_PAYMENT_FAILURE_RATE": "0", "FLASHSALE_MAIL_FAILURE_RATE": "0",
           "FLASHSALE_SEED": "1"}  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "obelisk", "serve", "examples.flashsale:app",
             "--port", str(port), "--app-dir", str(ROOT),
             "--store", f"sqlite:///{folder / 'events.db'}"],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    return process, port, log


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] or "(empty)"


def _stop_service(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def _prepare(port: int, process: subprocess.Popen[bytes], log: Path) -> tuple[str, str]:
    """Wait for /health, open a busy and a quiet section; their ids."""
    client = HttpClient("127.0.0.1", port, timeout=5)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(HttpError):
                if (await client.request("GET", "/health")).status == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, (
                f"the service did not start; its log:\n{_tail(log)}"
            )
            await asyncio.sleep(0.1)
        sections = ("busy", "quiet")
        for section, stock in zip(sections, (1_000_000, 100), strict=True):
            body = {"section_id": section, "sale_id": "sale", "name": section, "stock": stock}
            answer = await client.request("POST", "/sections", json.dumps(body).encode())
            assert answer.status == 201, answer
        # The read side is eventually consistent: a section is readable (not a 404) once its
        # projection applied the opening. The load starts after that.
        for section in sections:
            path = f"/sections/{section}/availability"
            while (await client.request("GET", path)).status != 200:
                assert time.monotonic() < deadline, f"{section} never became readable"
                await asyncio.sleep(0.02)
        return sections
    finally:
        await client.close()


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[LiveService]:
    """The flash-sale service with the load generator running (and warmed up: the stats
    show requests per second, latency and cache hits before the page first looks)."""
    process, port, log = _start_service(tmp_path)
    try:
        sections = asyncio.run(_prepare(port, process, log))
        load = Load(port, sections)
        service = LiveService(f"http://127.0.0.1:{port}{DASHBOARD_PATH}", port, load, log)
        load.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                stats = service.stats()
                if _busy(stats):
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.2)
            yield service
        finally:
            load.stop()
    finally:
        code = _stop_service(process)
    assert code == 0, f"the service exited with {code}; its log:\n{_tail(log)}"


def _busy(stats: dict[str, Any]) -> bool:
    """Whether the stats show load: requests in the last second, latency, cache hits."""
    rate = sum(e["rate"] for e in stats["endpoints"])
    return rate > 0 and stats["latency"]["p50_ms"] > 0 and stats["cache"]["hit_ratio"] > 0


# ---- the stand-in server for the control ---------------------------------------------------

Stats = Callable[[], tuple[int, bytes]]


@contextmanager
def _serve(stats: Stats) -> Iterator[str]:
    """A local HTTP server with the page at /dashboard and ``stats()`` at /dashboard/stats;
    yields the page's URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == DASHBOARD_PATH:
                status, body, kind = 200, DASHBOARD_HTML, "text/html; charset=utf-8"
            elif path == STATS_PATH:
                status, body = stats()
                kind = "application/json"
            else:
                status, body, kind = 404, b"not found", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{DASHBOARD_PATH}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def broken_dashboard_url() -> Iterator[str]:
    """The page over stats that always fail (HTTP 500): the control."""
    with _serve(lambda: (500, b'{"error": "boom"}')) as url:
        yield url


# ---- the checks ----------------------------------------------------------------------------


def _with_x_axis(area: PlotArea) -> Box:
    """The plot area down to and including the x-axis rows (a line at zero lies there; the
    axis itself is grey, so it adds no coloured pixels)."""
    box = area.box
    return Box(box.x, box.y, box.width, box.height + 2)


def _line_pixels(png: Path, areas: dict[str, PlotArea]) -> dict[str, int]:
    """Coloured pixels per chart: above the x-axis for the charts that must show non-zero
    values, the x-axis rows included for the lag chart (zero is a likely value there)."""
    return {chart: coloured_pixels(png, areas[chart].box) for chart in ABOVE_ZERO} | {
        "chart-lag": coloured_pixels(png, _with_x_axis(areas["chart-lag"]), inset=0)
    }


# ---- the tests ---------------------------------------------------------------------------


def test_the_page_is_self_contained() -> None:
    html = DASHBOARD_HTML.decode()
    for outside in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert outside not in html, f"the page must not load anything from elsewhere: {outside}"
    for chart in CHARTS:
        assert f'id="{chart}"' in html


def test_all_four_charts_plot_the_live_service_under_load(
    live_service: LiveService, tmp_path: Path
) -> None:
    before = live_service.stats()
    page = capture(live_service.url, tmp_path / "dashboard.png", wait_ms=WAIT_MS)
    after = live_service.stats()

    assert live_service.load.errors == [], live_service.load.errors
    assert live_service.load.count("POST /reservations 201") > 0, live_service.load.statuses
    assert live_service.load.count("GET availability 304") > 0, live_service.load.statuses
    assert _busy(before) and _busy(after), (before, after)
    assert {p["name"] for p in after["projections"]} >= {"flashsale_availability",
                                                         "flashsale_orders"}  # fmt: skip

    assert body_attribute(page.dom, "data-state") == "live"
    assert int(body_attribute(page.dom, "data-samples") or 0) >= 3
    assert (element_text(page.dom, "status") or "") == "live"
    assert (element_text(page.dom, "f-requests") or NO_FIGURE) != NO_FIGURE
    assert (element_text(page.dom, "f-reservations") or NO_FIGURE) != NO_FIGURE
    assert "%" in (element_text(page.dom, "x-cache") or "")
    assert re.fullmatch(r"max [\d.]+ ms · [\d,]+ events behind", element_text(page.dom, "x-lag")
                        or ""), element_text(page.dom, "x-lag")  # fmt: skip
    areas = plot_areas(page.dom)
    assert set(areas) == set(CHARTS), areas
    pixels = _line_pixels(page.png, areas)
    for chart in CHARTS:
        assert areas[chart].points >= 3, (chart, areas[chart])
        assert pixels[chart] >= MIN_LINE_PIXELS, (chart, pixels, page.png)


def test_without_stats_the_charts_stay_empty_and_the_page_says_disconnected(
    broken_dashboard_url: str, tmp_path: Path
) -> None:
    page = capture(broken_dashboard_url, tmp_path / "broken.png", wait_ms=3_000)

    assert body_attribute(page.dom, "data-state") == "disconnected"
    assert body_attribute(page.dom, "data-samples") == "0"
    assert element_text(page.dom, "status") == "disconnected"
    areas = plot_areas(page.dom)
    assert set(areas) == set(CHARTS), areas
    pixels = _line_pixels(page.png, areas)
    for chart in CHARTS:
        assert areas[chart].points == 0, (chart, areas[chart])
        assert coloured_pixels(page.png, areas[chart].box) < MIN_LINE_PIXELS, chart
        assert pixels[chart] < MIN_LINE_PIXELS, (chart, pixels)
