"""The flash sale's live dashboard: one self-contained HTML page (inline CSS and JavaScript,
nothing fetched from elsewhere) that the HTTP service serves at ``/dashboard``.

The page polls ``<its own path>/stats`` (so ``/dashboard/stats``) every second, keeps the last
120 samples and draws throughput per endpoint, latency percentiles, projection lag and the
cache hit ratio. The stats it expects::

    {"time": 1764170000.25,
     "endpoints": [{"name": "POST /reservations", "requests": 12345, "rate": 4980.0,
                    "p50_ms": 2.1, "p95_ms": 9.8, "p99_ms": 21.0}],
     "latency": {"p50_ms": 1.2, "p95_ms": 7.0, "p99_ms": 18.0},
     "projections": [{"name": "flashsale_availability", "lag_ms": 12.0, "lag_positions": 40}],
     "cache": {"hits": 1000, "misses": 10, "hit_ratio": 0.99},
     "sale": {"reservations": 900, "paid": 500, "expired": 100, "seats_sold": 1500,
              "stock": 2000, "oversold": 0}}

Each chart's ``<canvas>`` carries ``data-points`` (samples plotted) and ``data-plot``
(``x,y,width,height`` of its plot area in page pixels); ``<body>`` carries ``data-state``
(``waiting``, ``live`` or ``disconnected``) and ``data-samples``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["DASHBOARD_HTML", "DASHBOARD_PATH", "STATS_PATH"]

DASHBOARD_PATH: Final = "/dashboard"
STATS_PATH: Final = "/dashboard/stats"
DASHBOARD_HTML: Final[bytes] = (Path(__file__).with_name("dashboard.html")).read_bytes()
