"""``obelisk serve module:app``: run an ASGI application under uvicorn, in one process or
several sharing one port.

Where the application keeps its data is passed in the environment (``OBELISK_STORE``,
``OBELISK_READ_STORE``, ``OBELISK_BROKER``, ``OBELISK_REDIS``), so every worker process
reads the same settings when it starts. Several processes need a server database and a
broker between them: an embedded SQLite file has one writer process, and the in-memory
broker lives in one process — both are refused with ``--workers`` > 1.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeOptions", "check_options", "serve"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    target: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    store: str | None = None
    read_store: str | None = None
    broker: str | None = None
    redis: str | None = None
    app_dir: str = "."
    log_level: str = "warning"


def check_options(options: ServeOptions) -> list[str]:
    """What is wrong with ``options`` (empty: nothing)."""
    problems = []
    if ":" not in options.target:
        problems.append(f"{options.target!r} is not module:attribute")
    if options.workers < 1:
        problems.append("--workers must be >= 1")
    if not 0 <= options.port <= 65535:
        problems.append("--port must be within 0..65535")
    store = options.store or os.environ.get("OBELISK_STORE") or "sqlite://"
    broker = options.broker or os.environ.get("OBELISK_BROKER") or "memory://"
    if options.workers > 1:
        if store.startswith("sqlite:"):
            problems.append(
                "several processes need a PostgreSQL store (--store postgresql://...): "
                "an SQLite file has one writer process"
            )
        if broker.startswith("memory:"):
            problems.append(
                "several processes need a broker they share (--broker redis://... or "
                "nats://...): the memory broker lives in one process"
            )
        if not (options.redis or os.environ.get("OBELISK_REDIS")):
            problems.append(
                "several processes need --redis redis://... to invalidate each other's query caches"
            )
    return problems


def serve(options: ServeOptions) -> None:
    """Run ``options.target`` until SIGINT/SIGTERM (uvicorn stops it gracefully)."""
    import uvicorn

    for name, value in (("OBELISK_STORE", options.store),
                        ("OBELISK_READ_STORE", options.read_store),
                        ("OBELISK_BROKER", options.broker),
                        ("OBELISK_REDIS", options.redis)):  # fmt: skip
        if value:
            os.environ[name] = value
    app_dir = str(Path(options.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    # Worker processes are spawned: they find the application the same way.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (app_dir, os.environ.get("PYTHONPATH")) if p
    )
    uvicorn.run(
        options.target,
        host=options.host,
        port=options.port,
        workers=options.workers,
        log_level=options.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
