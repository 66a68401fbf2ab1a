"""The SQLite write path: group commit with the fsync off the event loop.

Appends are gathered on the event loop. A batch is checked and inserted on the loop
(cheap, and the loop already holds the GIL), then its COMMIT — the fsync, which is most of
the cost — runs on the commit thread while the loop goes on preparing the next batch. At
most one batch is in flight, so the connection is only ever used by one thread at a time.

Why not a writer thread that does everything? Measured here: a thread hop costs about
40 us per round trip, and a thread that must re-take the GIL for every row it binds waits
for the busy event loop (up to the 5 ms switch interval) again and again. Keeping the
Python work on the loop and giving the thread only the GIL-free fsync avoids both.

How batches form: appends submitted while a commit is in flight wait, and form the next
batch the moment it finishes. With nothing in flight, a batch starts at the end of the
loop iteration, so every task that was ready in that iteration joins it. (Splitting the
clients into two groups that alternate, one committing while the other runs, was
measured and lost: it doubles the number of fsyncs, and with the aggregate cache the
handlers are too cheap for the overlap to pay that back.) A lone append with nothing in
flight commits right on the loop (``inline_solo_commits``): one sequential client pays no
thread hop at all.

The loop never waits on another process's lock: its transactions start with a zero busy
timeout, and a batch that finds the file locked goes to the commit thread, which waits up
to ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from obelisk.errors import StoreClosed, StoreError
from obelisk.observability.histogram import BATCH_BUCKETS, LATENCY_BUCKETS, FastHistogram
from obelisk.store._jobs import on_settled, settle
from obelisk.store._sqlite_batch import (
    HeadCache,
    Staged,
    WriteJob,
    commit_each_alone,
    fail,
    is_busy,
    rollback,
    stage_and_insert,
    translate,
)
from obelisk.store.base import PreparedAppend
from obelisk.store.records import AppendResult

__all__ = ["SQLiteWriter", "WriteJob"]

_STOP = object()
_COMMIT = "commit"  # the batch is inserted; the thread only commits it
_WHOLE = "whole"  # the thread runs the whole batch, waiting for a lock if it must
_EACH = "each"  # the thread commits each job alone (after a unique-index violation)


class SQLiteWriter:
    """Owns the write connection and commits appends in groups (see the module notes)."""

    def __init__(
        self,
        connect: Any,
        *,
        max_batch: int = 4096,
        inline_solo_commits: bool = True,
        busy_timeout: float = 5.0,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._inline = inline_solo_commits
        self._busy_ms = int(busy_timeout * 1000)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="obelisk-sqlite-commit", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gathered: list[WriteJob] = []
        self._flush_scheduled = False
        self._in_flight: list[WriteJob] | None = None
        self._heads = HeadCache()
        self._in_flight_staged: Staged | None = None
        self._idle: asyncio.Future[None] | None = None
        self._closing = False
        self.batches = 0
        self.jobs = 0
        # Per batch, read by metrics: how many appends, and how long from start to commit.
        self.batch_sizes = FastHistogram(BATCH_BUCKETS)
        self.batch_seconds = FastHistogram(LATENCY_BUCKETS)
        self._batch_started = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the connection (schema included) and start the commit thread.

        Blocking: call it through ``asyncio.to_thread``.
        """
        conn = self._connect()
        # Zero busy timeout for transactions begun on the event loop: a lock held by
        # another process sends the batch to the commit thread instead of stalling the loop.
        conn.execute("PRAGMA busy_timeout = 0")
        self._conn = conn
        self._thread.start()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tie the writer to the event loop that submits appends."""
        self._loop = loop

    async def aclose(self) -> None:
        """Commit everything gathered or in flight, then stop the thread."""
        self._closing = True
        loop = asyncio.get_running_loop()
        self._drain()
        while self._in_flight is not None or self._gathered:
            self._idle = loop.create_future()
            await self._idle
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def terminate(self) -> None:
        """Fail gathered appends with StoreClosed now; a commit in flight still finishes."""
        self._closing = True
        gathered, self._gathered = self._gathered, []
        fail(gathered, StoreClosed("the SQLite event store was terminated"))
        settle(gathered)
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the commit thread to end."""
        self._thread.join(timeout)

    def when_settled(self, future: object, callback: Callable[[], None]) -> bool:
        """Register ``callback`` for the job of ``future`` if it is still pending."""
        jobs = list(self._gathered)
        if self._in_flight is not None:
            jobs.extend(self._in_flight)
        return on_settled(jobs, future, callback)

    @property
    def idle_connection(self) -> sqlite3.Connection | None:
        """The write connection when no batch is in flight (reads may use it), else None."""
        if self._in_flight is None and not self._closing:
            return self._conn
        return None

    @property
    def alive(self) -> bool:
        """Whether the commit thread is still running."""
        return self._thread.is_alive()

    # -- the event-loop side -------------------------------------------------------------

    def submit(self, parts: list[PreparedAppend]) -> asyncio.Future[list[AppendResult]]:
        """Queue an atomic append; the future resolves once its batch committed."""
        if self._closing:
            raise StoreClosed("the SQLite event store is closed")
        loop = self._loop
        if loop is None or asyncio.get_running_loop() is not loop:
            raise StoreError("this SQLite event store was opened on another event loop")
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        gathered = self._gathered
        gathered.append(WriteJob(parts, future))
        if self._in_flight is None and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_at_iteration_end)
        return future

    def _flush_at_iteration_end(self) -> None:
        self._flush_scheduled = False
        self._drain()

    def _drain(self) -> None:
        """Start batches while none is in flight (inline commits finish on the spot)."""
        # A loop, not recursion: each inline commit would otherwise start the next batch
        # from inside the previous one's completion.
        while self._in_flight is None and self._gathered:
            self._flush()
        if self._in_flight is None and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _flush(self) -> None:
        """Start the next batch: stage and insert it here, commit it here or on the thread."""
        self._batch_started = time.perf_counter()
        if len(self._gathered) <= self._max_batch:
            jobs, self._gathered = self._gathered, []
        else:
            jobs = self._gathered[: self._max_batch]
            del self._gathered[: self._max_batch]
        conn = self._conn
        assert conn is not None
        try:
            staged = stage_and_insert(conn, jobs, self._heads)
        except sqlite3.IntegrityError:
            rollback(conn)
            self._send(_EACH, jobs)
            return
        except sqlite3.Error as exc:
            rollback(conn)
            if is_busy(exc):
                self._send(_WHOLE, jobs)  # another process holds the lock: wait off-loop
            else:
                fail(jobs, translate(exc))
                self._complete(jobs)
            return
        except BaseException as exc:
            # A bug must not leave callers waiting forever: fail the batch, then raise.
            rollback(conn)
            fail(jobs, StoreError(f"append failed unexpectedly: {exc!r}"))
            self._complete(jobs)
            raise
        if self._inline and len(jobs) == 1:
            try:
                conn.execute("COMMIT")
                self._heads.remember(staged.heads, staged.last_position)
            except sqlite3.Error as exc:
                rollback(conn)
                fail(jobs, translate(exc))
                self._heads.clear()
            self._complete(jobs)
            return
        self._in_flight_staged = staged
        self._send(_COMMIT, jobs)

    def _send(self, mode: str, jobs: list[WriteJob]) -> None:
        if mode != _COMMIT:
            self._in_flight_staged = None
        self._in_flight = jobs
        self._queue.put((mode, jobs))

    def _returned(self, jobs: list[WriteJob], committed: bool) -> None:
        """A batch is back from the commit thread (runs on the loop)."""
        staged, self._in_flight_staged = self._in_flight_staged, None
        if committed and staged is not None:
            self._heads.remember(staged.heads, staged.last_position)
        else:
            self._heads.clear()  # run whole on the thread, or failed: heads unknown here
        if jobs is self._in_flight:
            self._in_flight = None
        self._complete(jobs)
        self._drain()  # everything that arrived during that commit

    def _complete(self, jobs: list[WriteJob]) -> None:
        self.batches += 1
        self.jobs += len(jobs)
        self.batch_sizes.observe(len(jobs))
        self.batch_seconds.observe(time.perf_counter() - self._batch_started)
        settle(jobs)
        if self._on_commit is not None and any(job.results for job in jobs):
            self._on_commit()

    # -- the commit thread ---------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                mode, jobs = item
                # Batches run whole on this thread wrote heads the cache never saw: it
                # is dropped for them (committed=False).
                committed = False
                try:
                    if mode == _COMMIT:
                        try:
                            conn.execute("COMMIT")
                            committed = True
                        except sqlite3.Error as exc:
                            rollback(conn)
                            fail(jobs, translate(exc))
                    else:
                        self._run_whole(conn, mode, jobs)
                except Exception as exc:
                    # Whatever went wrong, the callers must hear about it: a batch that
                    # never comes back would leave them (and close()) waiting forever.
                    rollback(conn)
                    fail(jobs, StoreError(f"commit failed unexpectedly: {exc!r}"))
                loop = self._loop
                if loop is not None:
                    try:
                        loop.call_soon_threadsafe(self._returned, jobs, committed)
                    except RuntimeError:
                        pass  # the loop is closed: nobody is waiting any more
        finally:
            conn.close()

    def _run_whole(self, conn: sqlite3.Connection, mode: str, jobs: list[WriteJob]) -> None:
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        try:
            if mode == _EACH:
                commit_each_alone(conn, jobs)
                return
            try:
                stage_and_insert(conn, jobs)
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                rollback(conn)
                commit_each_alone(conn, jobs)
            except sqlite3.Error as exc:
                rollback(conn)
                fail(jobs, translate(exc))
        finally:
            conn.execute("PRAGMA busy_timeout = 0")
