"""The demo's output: a progress line while the sale runs, a results table at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from examples.flashsale.stats import summarize

if TYPE_CHECKING:
    from examples.flashsale.demo import SaleReport

__all__ = ["print_sale", "progress_printer"]


def progress_printer(console: Console | None = None) -> Callable[[SaleReport], None]:
    """A callback printing, at most every 2 seconds, how the sale is going."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    shown = [started]

    def show(report: SaleReport) -> None:
        now = time.monotonic()
        if now - shown[0] < 2.0:
            return
        shown[0] = now
        seconds = now - started
        console.print(
            f"  {seconds:5.1f}s  {report.requests:7d} requests  "
            f"{len(report.made):6d} reservations  {report.sold_out:6d} sold-out answers",
            highlight=False,
        )

    return show


def print_sale(report: SaleReport, console: Console | None = None) -> None:
    console = console or Console()
    data = report.as_json()
    console.print(f"\n[bold]Flash sale[/]  store {data['store']}  broker {data['broker']}  "
                  f"{data['clients']} buyers over HTTP", highlight=False)  # fmt: skip
    endpoints = Table(title="Requests (client-side latency, ms)", title_justify="left")
    for column in ("endpoint", "requests", "p50", "p95", "p99"):
        endpoints.add_column(column, justify="left" if column == "endpoint" else "right")
    for name, values in sorted(report.latencies.items()):
        q = summarize(values)
        endpoints.add_row(name, str(len(values)), f"{q['p50_ms']:.2f}", f"{q['p95_ms']:.2f}",
                          f"{q['p99_ms']:.2f}")  # fmt: skip
    endpoints.add_row("[bold]all[/]", str(data["requests"]), "", "", "",
                      end_section=True)  # fmt: skip
    console.print(endpoints)
    sale = Table(title="The sale", title_justify="left", show_header=False)
    sale.add_column("what")
    sale.add_column("value", justify="right")
    rows = [
        ("requests/s", f"{data['requests_per_s']:,.0f} over {data['seconds']:.1f} s"),
        ("reservations made", f"{data['reservations']:,}"),
        ("  confirmed (paid)", f"{data['confirmed']:,}"),
        ("  expired", f"{data['expired']:,}"),
        ("sold-out answers", f"{data['sold_out_answers']:,}"),
        ("idempotent repeats", f"{data['idempotent_repeats']:,}"),
        ("seats sold / stock", f"{data['seats_sold']:,} / {data['stock']:,}"),
        ("oversold", str(data["oversold"])),
        ("charges (refunded)", f"{data['charges']:,} ({data['refunds']:,})"),
        ("e-mails sent", f"{data['emails']:,}"),
        ("projection lag, max", f"{data['projection_lag_ms_max']:.0f} ms"),
        ("cache hit ratio", f"{data['cache_hit_ratio']:.1%}"),
    ]
    for what, value in rows:
        sale.add_row(what, value)
    console.print(sale)
    if report.verified:
        console.print(Text("verified: every seat accounted for", style="bold green"))
    else:
        console.print(Text("verification FAILED", style="bold red"))
        for problem in data["problems"]:
            console.print(f"  - {problem}", highlight=False)
