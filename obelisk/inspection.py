"""``obelisk inspect STORE_URL``: which aggregates have grown too large, and how slow they load.

It lists the largest streams (events, payload bytes, the version of their snapshot, the
events a load must replay after it) and times a store-level load of each (the snapshot
plus the events after it, read and decoded; best of three), slowest first. It reads every
event row once to count them: run it against a replica or off-peak on a big store.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from obelisk.errors import CorruptEvent, ObeliskError, UnknownEventType
from obelisk.inspect_undecodable import print_undecodable
from obelisk.store.base import EventStore
from obelisk.store.records import StoredEvent
from obelisk.store.scan import find_undecodable
from obelisk.store.url import store_from_url

__all__ = [
    "InspectReport",
    "StreamReport",
    "inspect_store",
    "refuse_missing_file",
    "run_inspect_cli",
]

_TRIES = 3


class StreamReport(msgspec.Struct, frozen=True):
    """One stream as ``obelisk inspect`` reports it."""

    stream_id: str
    stream_type: str | None
    events: int
    data_bytes: int
    snapshot_version: int | None
    events_after_snapshot: int
    load_ms: float | None
    """None when the events cannot be decoded here (their classes were not imported)."""


class InspectReport(msgspec.Struct, frozen=True):
    """The largest streams (by events) and the same streams by load time, slowest first."""

    largest: list[StreamReport]
    slowest: list[StreamReport]


async def inspect_store(store: EventStore, *, limit: int = 20, slowest: int = 10) -> InspectReport:
    """Measure the ``limit`` largest streams of an open store."""
    sizes = await store.stream_sizes(limit=limit)
    reports = []
    for size in sizes:
        start = size.snapshot_version or 1
        reports.append(
            StreamReport(
                size.stream_id,
                size.stream_type,
                size.events,
                size.data_bytes,
                size.snapshot_version,
                size.events - (size.snapshot_version or 0),
                await _load_ms(store, size.stream_id, start),
            )
        )
    timed = [r for r in reports if r.load_ms is not None]
    by_time = sorted(timed, key=lambda r: r.load_ms or 0.0, reverse=True)[:slowest]
    return InspectReport(reports, by_time)


async def _load_ms(store: EventStore, stream_id: str, from_version: int) -> float | None:
    best = float("inf")
    for _ in range(_TRIES):
        started = time.perf_counter()
        await store.load_snapshot(stream_id)
        try:
            await store.read_stream_events(stream_id, from_version=from_version)
        except (UnknownEventType, CorruptEvent):
            # Decoding needs the application's event classes (--import), or the stream
            # holds an undecodable event (--undecodable lists them).
            return None
        best = min(best, time.perf_counter() - started)
    return best * 1000


def run_inspect_cli(
    url: str,
    *,
    limit: int,
    slowest: int,
    json_output: bool,
    imports: Sequence[str] = (),
    undecodable: bool = False,
) -> int:
    """``obelisk inspect``: print the report; 0, or 2 for a bad URL or unreachable store.

    ``imports`` names modules to import first: those defining the application's event
    classes, without which loads cannot be decoded (and are not timed). ``undecodable``
    lists the events that cannot be decoded instead (up to ``limit``): 1 when there are.
    """
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    if limit < 0 or slowest < 0:
        err.print("[bold red]error:[/] --limit and --slowest must be >= 0", highlight=False)
        return 2
    try:
        for module in imports:
            importlib.import_module(module)
    except ImportError as exc:
        err.print(f"[bold red]error:[/] cannot import {exc.name or exc}: {exc}", highlight=False)
        return 2
    try:
        refuse_missing_file(url)
        store = store_from_url(url)
        if undecodable:
            found = asyncio.run(_undecodable(store, limit))
        else:
            report = asyncio.run(_inspect(store, limit, slowest))
    except (ValueError, ObeliskError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    if undecodable:
        print_undecodable(found, json_output)
        return 1 if found else 0
    if json_output:
        sys.stdout.write(json.dumps(msgspec.to_builtins(report), indent=2) + "\n")
    else:
        _print(report)
    if any(r.load_ms is None for r in report.largest):
        err.print(
            "some streams hold event types this process does not know, so their loads were "
            "not timed: pass --import with the module that defines them",
            highlight=False,
        )
    return 0


def refuse_missing_file(url: str) -> None:
    """ValueError for a SQLite URL whose file does not exist.

    Opening a SQLite URL creates the file: a tool pointed at a typo must not leave one.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path.exists():
            raise ValueError(f"{path} does not exist")


async def _undecodable(store: EventStore, limit: int) -> list[StoredEvent]:
    async with store:
        return await find_undecodable(store, limit=limit)


async def _inspect(store: EventStore, limit: int, slowest: int) -> InspectReport:
    async with store:
        return await inspect_store(store, limit=limit, slowest=slowest)


def _print(report: InspectReport) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, rows in (
        ("largest streams", report.largest),
        ("slowest to load (snapshot + events after it, best of 3)", report.slowest),
    ):
        table = Table(title=title, box=box.SIMPLE_HEAD)
        for column in ("stream", "type", "events", "bytes", "snapshot", "replayed", "load ms"):
            table.add_column(column, justify="left" if column in ("stream", "type") else "right")
        for r in rows:
            table.add_row(
                r.stream_id,
                r.stream_type or "",
                f"{r.events:,}",
                f"{r.data_bytes:,}",
                "" if r.snapshot_version is None else f"{r.snapshot_version:,}",
                f"{r.events_after_snapshot:,}",
                "?" if r.load_ms is None else f"{r.load_ms:.2f}",
            )
        console.print(table)
    if not report.largest:
        console.print("the store holds no events")
