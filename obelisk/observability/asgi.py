"""Serving metrics: an ASGI ``/metrics`` app to mount in your web application."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from obelisk.observability.metrics import Metrics

__all__ = ["metrics_asgi_app"]


def metrics_asgi_app(metrics: Metrics) -> Any:
    """An ASGI app answering every GET with ``metrics`` in the Prometheus text format."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = generate_latest(metrics.registry)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
