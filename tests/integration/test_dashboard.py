"""The flash sale's live dashboard (examples/flashsale/dashboard.html) in headless Chromium.

Chromium loads the page, lets it poll its stats for a few seconds of virtual time, then takes
a screenshot; a second run beside it dumps the DOM, where each chart's ``<canvas>`` says
where its plot area is (``data-plot``) and how many samples it drew (``data-points``). A chart
shows data when its plot area holds enough line-coloured (saturated) pixels. The control: a
page whose stats answer 500 plots nothing, so the check can fail.

The page is served by ``dashboard_url``: for now a small stand-in server (``_serve``) with
stats in the service's format that change on every call; the real service can take its place
by changing only that fixture.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from examples.flashsale.dashboard import DASHBOARD_HTML, DASHBOARD_PATH, STATS_PATH

from ._chromium import (
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

CHARTS = ("chart-throughput", "chart-latency", "chart-lag", "chart-cache")
WAIT_MS = 8_000  # virtual ms the page runs before the screenshot: about 8 samples
NO_FIGURE = "\N{EN DASH}"  # what a header figure shows before the first sample
MIN_LINE_PIXELS = 150  # a line across a chart is ~1000 such pixels; an empty chart has 0


# ---- the server under the page (swap this part for the real service) ---------------------

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


def _changing_stats() -> Stats:
    """Stats in the service's format whose numbers move on every call (so lines have shape)."""
    calls = itertools.count(1)
    lock = threading.Lock()
    endpoints = {"POST /reservations": 5000.0, "GET /sections/{id}": 8000.0, "POST /pay": 1500.0}
    projections = {"flashsale_availability": 12.0, "flashsale_orders": 30.0}

    def stats() -> tuple[int, bytes]:
        with lock:
            n = next(calls)

        def wave(base: float, i: int = 0) -> float:
            return base * (1 + 0.3 * math.sin(n / 2 + i))

        body = {
            "time": time.time(),
            "endpoints": [
                {"name": name, "requests": int(rate * n), "rate": wave(rate, i),
                 "p50_ms": wave(1.0, i), "p95_ms": wave(5.0, i + 1), "p99_ms": wave(12.0, i + 2)}
                for i, (name, rate) in enumerate(endpoints.items())
            ],
            "latency": {"p50_ms": wave(1.2), "p95_ms": wave(7.0, 1), "p99_ms": wave(18.0, 2)},
            "projections": [
                {"name": name, "lag_ms": wave(lag, i), "lag_positions": int(wave(lag, i))}
                for i, (name, lag) in enumerate(projections.items())
            ],
            "cache": {"hits": 1000 * n, "misses": 10 * n, "hit_ratio": 0.95 + 0.03 * wave(1.0)},
            "sale": {"reservations": 90 * n, "paid": 50 * n, "expired": 10 * n,
                     "seats_sold": min(2000, 150 * n), "stock": 2000, "oversold": 0},
        }  # fmt: skip
        return 200, json.dumps(body).encode()

    return stats


@pytest.fixture
def dashboard_url() -> Iterator[str]:
    """The dashboard page under test (a stand-in for the flash-sale service, for now)."""
    with _serve(_changing_stats()) as url:
        yield url


@pytest.fixture
def broken_dashboard_url() -> Iterator[str]:
    """The same page over stats that always fail (HTTP 500): the control."""
    with _serve(lambda: (500, b'{"error": "boom"}')) as url:
        yield url


# ---- the tests ---------------------------------------------------------------------------


def test_the_page_is_self_contained() -> None:
    html = DASHBOARD_HTML.decode()
    for outside in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert outside not in html, f"the page must not load anything from elsewhere: {outside}"
    for chart in CHARTS:
        assert f'id="{chart}"' in html


def test_all_four_charts_plot_the_stats(dashboard_url: str, tmp_path: Path) -> None:
    page = capture(dashboard_url, tmp_path / "dashboard.png", wait_ms=WAIT_MS)

    assert body_attribute(page.dom, "data-state") == "live"
    assert int(body_attribute(page.dom, "data-samples") or 0) >= 3
    assert (element_text(page.dom, "status") or "") == "live"
    assert (element_text(page.dom, "f-requests") or NO_FIGURE) != NO_FIGURE
    assert "%" in (element_text(page.dom, "x-cache") or "")
    areas = plot_areas(page.dom)
    assert set(areas) == set(CHARTS), areas
    pixels = {chart: coloured_pixels(page.png, areas[chart].box) for chart in CHARTS}
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
    for chart in CHARTS:
        assert areas[chart].points == 0, (chart, areas[chart])
        assert coloured_pixels(page.png, areas[chart].box) < MIN_LINE_PIXELS, chart
