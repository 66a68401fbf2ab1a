"""What the projection integration tests share: both backends, the log and its fold.

``Backend`` opens new store objects on one event database and one read database (as
separate processes would); ``fold`` computes the ledgers read model from the log,
independently of :class:`~._projection_worker.Ledger`'s own handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from obelisk.projections import ProjectionRunner, ProjectionWorker, ReadStore
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.store import NO_STREAM, AppendRequest, SQLiteEventStore, StoredEvent
from obelisk.store.base import EventStore
from obelisk.store.postgres import PostgresEventStore

from ._projection_worker import Ledger, LedgerCredited, LedgerNoted, LedgerOpened

WAIT = 30.0  # bound on any wait for a condition; a hang fails the test instead of CI
NAME = Ledger.name

Row = tuple[str, int, int, int]  # owner, balance, credits, last_version


# -- backends ------------------------------------------------------------------------------


class Backend:
    """One event database and one read database of a kind; opens new store objects on
    them (as separate processes would), and runs raw SQL behind the stores' backs."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str = "", schema: str = "") -> None:
        self.kind = kind
        self.events_path = tmp_path / "events.db"
        self.read_path = tmp_path / "read.db"
        self.dsn = dsn
        self.schema = schema

    @property
    def placeholder(self) -> str:
        """The first parameter's placeholder in this database's SQL."""
        return "?" if self.kind == "sqlite" else "$1"

    def event_store(self) -> EventStore:
        if self.kind == "sqlite":
            return SQLiteEventStore(self.events_path)
        return PostgresEventStore(self.dsn, schema=self.schema, pool_min_size=1)

    def read_store(self) -> ReadStore:
        if self.kind == "sqlite":
            return SQLiteReadStore(self.read_path)
        # The event store's own schema: its tables and the read store's do not clash.
        return PostgresReadStore(self.dsn, schema=self.schema)

    def worker_args(self) -> list[str]:
        """The arguments naming these databases for ``_projection_worker.py``."""
        if self.kind == "sqlite":
            return ["--kind", "sqlite", "--events", str(self.events_path), "--read",
                    str(self.read_path)]  # fmt: skip
        return ["--kind", "postgresql", "--events", self.dsn, "--read", self.dsn,
                "--schema", self.schema]  # fmt: skip

    async def damage_event(self, stream_id: str, version: int) -> None:
        """Overwrite one stored event's payload with bytes no codec decodes."""
        sql = "UPDATE {table} SET data = {value} WHERE stream_id = '{sid}' AND version = {v}"
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.events_path)) as conn, conn:
                conn.execute(
                    sql.format(table="obelisk_events", value="x'ff00'", sid=stream_id, v=version)
                )
            return
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                sql.format(
                    table=f'"{self.schema}".obelisk_events',
                    value="'\\xff00'::bytea",
                    sid=stream_id,
                    v=version,
                )
            )
        finally:
            await conn.close()

    async def relation_exists(self, read_store: ReadStore, name: str) -> bool:
        """Whether a table, view or index of this name exists in the read database."""
        if self.kind == "sqlite":
            rows = await read_store.query("SELECT 1 FROM sqlite_master WHERE name = ?", name)
            return bool(rows)
        rows = await read_store.query(
            "SELECT to_regclass($1) IS NOT NULL", f'"{self.schema}"."{name}"'
        )
        return bool(rows[0][0])


def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        return Backend("postgresql", tmp_path, dsn, schema)
    return Backend("sqlite", tmp_path)


# -- the log and its fold ------------------------------------------------------------------


async def write_ledgers(
    store: EventStore,
    ledgers: int,
    credits: int,
    *,
    prefix: str = "l",
    owners: int = 5,
    noted: bool = False,
) -> int:
    """Open ``ledgers`` streams and credit each ``credits`` times (amounts vary); with
    ``noted`` an undeclared event follows every credit. Returns the last position."""
    ids = [f"{prefix}-{i}" for i in range(ledgers)]
    results = await store.append_many(
        [
            AppendRequest(sid, [LedgerOpened(owner=f"o-{i % owners}")], NO_STREAM, "Ledger")
            for i, sid in enumerate(ids)
        ]
    )
    last = results[-1].last_position if results else 0
    for round_ in range(credits):
        requests = []
        for i, sid in enumerate(ids):
            events: list[Any] = [LedgerCredited(amount=1 + (i * 7 + round_ * 3) % 11)]
            if noted:
                events.append(LedgerNoted(text=f"note {round_}"))
            requests.append(AppendRequest(sid, events))
        results = await store.append_many(requests)
        last = results[-1].last_position
    return await visible(store, last)


async def visible(store: EventStore, position: int) -> int:
    """Wait until readers of ``store`` see ``position`` (returned).

    PostgreSQL shows a position only once every transaction older than its commit has
    ended, anywhere on the server: a busy shared server can hold the head back a moment.
    """
    deadline = time.monotonic() + WAIT
    while await store.last_position() < position:
        assert time.monotonic() < deadline, f"position {position} never became visible"
        await asyncio.sleep(0.01)
    return position


async def read_everything(store: EventStore) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    while True:
        page = await store.read_all(after=events[-1].position if events else 0, limit=5000)
        if not page:
            return events
        events.extend(page)


def fold(events: Iterable[StoredEvent]) -> dict[str, Row]:
    """The ledgers table computed from the log, independently of :class:`Ledger`."""
    rows: dict[str, Row] = {}
    for stored in events:
        event = stored.event
        if isinstance(event, LedgerOpened):
            rows[stored.stream_id] = (event.owner, 0, 0, stored.version)
        elif isinstance(event, LedgerCredited):
            owner, balance, credits, _ = rows[stored.stream_id]
            rows[stored.stream_id] = (owner, balance + event.amount, credits + 1, stored.version)
    return rows


async def ledger_rows(read_store: ReadStore) -> dict[str, Row]:
    """The ledgers read model, through its view."""
    rows = await read_store.query(
        f"SELECT id, owner, balance, credits, last_version FROM {read_store.qualified('ledgers')}"
    )
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


async def applied_rows(read_store: ReadStore) -> list[tuple[str, int, int, str, int, float]]:
    """(stream, version, position, worker, times, applied_at) of every applied event."""
    rows = await read_store.query(
        "SELECT stream_id, version, position, worker, times, applied_at FROM "
        f"{read_store.qualified('applied')} ORDER BY position"
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def assert_exactly_once(store: EventStore, read_store: ReadStore) -> None:
    """Every handled event of the log applied once, and the read model is the fold."""
    events = await read_everything(store)
    handled = [e for e in events if not isinstance(e.event, LedgerNoted)]
    applied = await applied_rows(read_store)
    twice = [r for r in applied if r[4] != 1]
    assert not twice, f"applied more than once: {twice[:5]}"
    assert [(r[0], r[1], r[2]) for r in applied] == [
        (e.stream_id, e.version, e.position) for e in handled
    ]
    assert await ledger_rows(read_store) == fold(events)


# -- running runners -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner | ProjectionWorker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner`` in a task; stop it gracefully at the end and surface its errors."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(task, WAIT)


async def reach(runner: ProjectionRunner, task: asyncio.Task[None], position: int) -> None:
    """Wait until ``runner`` applied ``position``; fail at once if its task ended."""
    waiter = asyncio.ensure_future(runner.wait_for(position, WAIT))
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        task.result()  # raises what stopped the runner
        pytest.fail(f"{runner!r} returned before it reached position {position}")
    assert waiter.result(), f"{runner!r} did not reach position {position} in {WAIT}s"


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Return once ``condition()`` holds; fail after ``WAIT`` seconds."""
    # Polling: the conditions are states of the code under test, which sets no event.
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def spy(
    monkeypatch: pytest.MonkeyPatch, target: object, method: str
) -> list[tuple[tuple[Any, ...], Any]]:
    """Record (arguments, result) of every call of ``target.method`` (an instance's)."""
    calls: list[tuple[tuple[Any, ...], Any]] = []
    real = getattr(target, method)

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(target, method, recorded)
    return calls
