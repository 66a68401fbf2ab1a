"""The SQLite writer thread: one connection, group commit.

Every append from every task is queued to this thread. It takes everything queued at that
moment as one batch, checks each append against the stream heads under the write lock,
writes the accepted ones with one executemany and commits once. While it waits for the
fsync of one batch the next batch fills up, so the commit rate, not the command rate, is
what the disk bounds.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from obelisk.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    ObeliskError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from obelisk.store._idempotency import replayed_result
from obelisk.store.base import PreparedAppend
from obelisk.store.records import ANY, AppendResult

__all__ = ["WriteJob", "SQLiteWriter"]

_INSERT_EVENT = (
    "INSERT INTO obelisk_events (position, stream_id, version, event_id, event_type, "
    "schema_version, data, recorded_at, correlation_id, causation_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_STREAM = (
    "INSERT INTO obelisk_streams (stream_id, stream_type, version) VALUES (?, ?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version"
)
_STOP = object()


@dataclass(slots=True)
class WriteJob:
    """One atomic append (one or more streams) waiting for the writer."""

    parts: list[PreparedAppend]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[AppendResult]]
    results: list[AppendResult] | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Batch:
    """What one transaction will write, built while checking the jobs in order."""

    next_position: int
    heads: dict[str, int] = field(default_factory=dict)
    new_streams: dict[str, str | None] = field(default_factory=dict)
    touched: dict[str, int] = field(default_factory=dict)
    ids: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)
    rows: list[tuple[Any, ...]] = field(default_factory=list)


def _settle(jobs: list[WriteJob], writer: SQLiteWriter | None = None) -> None:
    # Runs on the event loop: a caller whose task was cancelled has a done future;
    # its append still committed (or failed) and there is nobody left to tell.
    if writer is not None:
        writer._queued -= len(jobs)
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.results)  # type: ignore[arg-type]


class SQLiteWriter:
    """Owns the write connection and commits queued appends in groups.

    Appends submitted during one event-loop iteration are gathered first. A lone append
    (one sequential client) is committed right there on the loop thread while the writer
    thread is idle: handing it to a thread and back costs two wake-ups (about 40 us here,
    a third of a FULL-synchronous commit) for no batching gain. Two or more appends, or
    any append while a batch is being committed, go to the writer thread, which overlaps
    their fsync with the loop's work and commits everything queued meanwhile as one batch.
    The connection is used by one thread at a time, under ``_conn_lock``.
    """

    def __init__(
        self,
        connect: Any,
        *,
        max_batch: int = 4096,
        inline_solo_commits: bool = True,
    ) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._inline = inline_solo_commits
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="obelisk-sqlite-writer", daemon=True)
        self._ready = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._gathered: list[WriteJob] | None = None
        self._queued = 0  # jobs handed to the thread and not yet committed
        self._startup_error: BaseException | None = None
        self._closing = False
        self._terminated = False
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        """Start the thread and wait until its connection is open."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, parts: list[PreparedAppend]) -> asyncio.Future[list[AppendResult]]:
        """Queue an atomic append; the future resolves after its batch committed."""
        if self._closing:
            raise StoreClosed("the SQLite event store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        job = WriteJob(parts, loop, future)
        gathered = self._gathered
        if gathered is None:
            # First append of this loop iteration: every task already runnable gets to
            # submit before the flush runs, so concurrent appends form one batch.
            self._gathered = [job]
            loop.call_soon(self._flush_gathered)
        else:
            gathered.append(job)
        return future

    def _flush_gathered(self) -> None:
        jobs, self._gathered = self._gathered, None
        if not jobs:
            return
        if (
            self._inline
            and len(jobs) == 1
            and self._queued == 0
            and self._conn is not None
            and self._conn_lock.acquire(blocking=False)
        ):
            try:
                self._commit(self._conn, jobs)
            finally:
                self._conn_lock.release()
            _settle(jobs)
            return
        self._queued += len(jobs)
        self._queue.put(jobs)

    def stop(self) -> None:
        """Finish every queued job, then end the thread (call join to wait)."""
        if not self._closing:
            self._closing = True
            gathered, self._gathered = self._gathered, None
            if gathered:
                self._queue.put(gathered)  # before _STOP, so they are committed too
            self._queue.put(_STOP)

    def terminate(self) -> None:
        """Fail queued jobs with StoreClosed and end the thread."""
        self._terminated = True
        self.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread is still running."""
        return self._thread.is_alive()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._conn = conn
        self._ready.set()
        try:
            self._loop(conn)
        finally:
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _loop(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()
            stopping = item is _STOP
            batch: list[WriteJob] = [] if stopping else list(item)
            # Take everything already queued: these are the appends that arrived while
            # the previous batch was being committed.
            while not stopping and len(batch) < self._max_batch:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.extend(item)
            if batch:
                if self._terminated:
                    for job in batch:
                        job.error = StoreClosed("the SQLite event store was terminated")
                else:
                    with self._conn_lock:
                        self._commit(conn, batch)
                self._notify(batch)
            if stopping:
                return

    def _notify(self, batch: list[WriteJob]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[WriteJob]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, jobs, self)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def _commit(self, conn: sqlite3.Connection, jobs: list[WriteJob]) -> None:
        try:
            self._write_batch(conn, jobs)
        except sqlite3.IntegrityError:
            # Only a reused event id that is not the first of its append gets here (the
            # checks catch everything else). Redo each job alone so the bad one fails
            # by itself.
            _rollback(conn)
            if len(jobs) == 1:
                jobs[0].results = None
                jobs[0].error = IdempotencyConflict(
                    "an event id of this append is already stored by another append"
                )
                return
            for job in jobs:
                job.results, job.error = None, None
                self._commit(conn, [job])
        except sqlite3.Error as exc:
            _rollback(conn)
            error = _translate(exc)
            for job in jobs:
                job.results = None
                job.error = error

    def _write_batch(self, conn: sqlite3.Connection, jobs: list[WriteJob]) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so the heads read below cannot
        # change before COMMIT, even with other processes on the same file.
        conn.execute("BEGIN IMMEDIATE")
        (last,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM obelisk_events").fetchone()
        batch = _Batch(last + 1)
        now = time.time()
        for job in jobs:
            try:
                job.results = self._stage(conn, batch, job.parts, now)
            except ObeliskError as exc:
                job.error = exc
        if batch.rows:
            conn.executemany(_INSERT_EVENT, batch.rows)
            conn.executemany(
                _UPSERT_STREAM,
                [(sid, batch.new_streams.get(sid), version)
                 for sid, version in batch.touched.items()],
            )
        conn.execute("COMMIT")
        self.batches += 1
        self.jobs += len(jobs)

    def _stage(
        self, conn: sqlite3.Connection, batch: _Batch, parts: list[PreparedAppend], now: float
    ) -> list[AppendResult]:
        """Check one job against the heads; stage its rows only if every part passes."""
        outcomes: list[AppendResult | None] = []
        for part in parts:
            replay = self._replayed(conn, batch, part) if part.ids_given else None
            if replay is None:
                current = self._head(conn, batch, part.stream_id)
                expected = part.expected_version
                if expected != ANY and expected != current:
                    raise ConcurrencyError(part.stream_id, expected, current)
            outcomes.append(replay)
        # Every part passed: now stage rows. Nothing above changed the batch, so a failed
        # job leaves no trace in the transaction.
        results: list[AppendResult] = []
        position = batch.next_position
        for part, replay in zip(parts, outcomes, strict=True):
            if replay is not None:
                results.append(replay)
                continue
            sid = part.stream_id
            version = batch.heads[sid]
            if version == 0:
                batch.new_streams[sid] = part.stream_type
            first = position
            for encoded in part.events:
                version += 1
                batch.rows.append(
                    (position, sid, version, encoded.event_id, encoded.type_name,
                     encoded.schema_version, encoded.data, now,
                     part.correlation_id, part.causation_id)
                )
                if part.ids_given:
                    batch.ids[encoded.event_id] = (sid, version, position)
                position += 1
            batch.heads[sid] = batch.touched[sid] = version
            results.append(AppendResult(sid, version, first, position - 1))
        batch.next_position = position
        return results

    def _head(self, conn: sqlite3.Connection, batch: _Batch, stream_id: str) -> int:
        version = batch.heads.get(stream_id)
        if version is None:
            row = conn.execute(
                "SELECT version FROM obelisk_streams WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            version = batch.heads[stream_id] = row[0] if row is not None else 0
        return version

    def _replayed(
        self, conn: sqlite3.Connection, batch: _Batch, part: PreparedAppend
    ) -> AppendResult | None:
        first_id = part.events[0].event_id
        if first_id not in batch.ids and self._lookup_id(conn, first_id) is None:
            return None
        found = [batch.ids.get(e.event_id) or self._lookup_id(conn, e.event_id)
                 for e in part.events]
        return replayed_result(part.stream_id, found)

    @staticmethod
    def _lookup_id(conn: sqlite3.Connection, event_id: bytes) -> tuple[str, int, int] | None:
        row = conn.execute(
            "SELECT stream_id, version, position FROM obelisk_events WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL)


def _translate(exc: sqlite3.Error) -> StoreError:
    message = str(exc).lower()
    if "readonly" in message or "read-only" in message:
        hint = "the database file or its folder is read-only"
    elif "locked" in message or "busy" in message:
        hint = "the database is locked by another connection or process (busy timeout expired)"
    elif "full" in message:
        hint = "the disk (or the configured size limit) is full"
    elif "disk i/o" in message:
        hint = "the disk reported an I/O error"
    else:
        return StoreError(f"SQLite error: {exc}; the append was not written")
    return StoreUnavailable(f"{hint}: {exc}; the append was not written")
