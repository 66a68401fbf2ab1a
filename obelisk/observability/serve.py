"""``obelisk metrics STORE_URL``: a store's metrics over HTTP, with no application running.

For what can be seen from outside the command processes: whether the store answers, how
long a look at it takes, and its last position (a log that stops growing is visible from
here). Each scrape looks at the store afresh. The command processes' own metrics come from
their Observer (mount :func:`~obelisk.observability.asgi.metrics_asgi_app`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

from obelisk.store.base import EventStore

__all__ = ["StoreMetrics", "run_metrics_cli", "serve_store_metrics"]


class StoreMetrics(Collector):
    """The store's figures as of the last :meth:`refresh`."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.up = 0.0
        self.last_position = 0.0
        self.seconds = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    async def refresh(self) -> None:
        started = time.perf_counter()
        try:
            self.last_position = float(await self.store.last_position())
            self.up = 1.0
        except Exception:  # a scrape reports the store down; it never fails itself
            self.up = 0.0
        self.seconds = time.perf_counter() - started

    async def exposition(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        for name, doc, value in (
            ("obelisk_store_up", "1 when the store answered the last scrape.", self.up),
            ("obelisk_store_last_position", "The store's last committed position.",
             self.last_position),
            ("obelisk_store_scrape_seconds", "How long the last look at the store took.",
             self.seconds),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge

    def describe(self) -> Iterator[Any]:
        return iter(())


async def serve_store_metrics(
    metrics: StoreMetrics, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    """Answer every HTTP request with the exposition, until cancelled."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            method = request.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"", b"text/plain"
            else:
                body = await metrics.exposition()
                status, kind = b"200 OK", CONTENT_TYPE_LATEST.encode()
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (body if method != b"HEAD" else b"")
            )  # fmt: skip
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # a client that went away or sent nonsense: nothing to answer
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def run_metrics_cli(url: str, *, host: str, port: int, once: bool) -> int:
    """``obelisk metrics``: print the exposition once, or serve it until interrupted."""
    from rich.console import Console

    from obelisk.inspection import refuse_missing_file
    from obelisk.store.url import store_from_url

    err = Console(stderr=True, soft_wrap=True)
    try:
        refuse_missing_file(url)
        store = store_from_url(url)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2

    async def run() -> int:
        try:
            await store.open()
        except Exception as exc:
            err.print(f"[bold red]error:[/] cannot open {url}: {exc}", highlight=False)
            return 2
        try:
            metrics = StoreMetrics(store)
            if once:
                print((await metrics.exposition()).decode(), end="")
                return 0
            err.print(f"serving {url} metrics on http://{host}:{port}/metrics", highlight=False)
            await serve_store_metrics(metrics, host, port)
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
