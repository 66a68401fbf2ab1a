"""The PostgreSQL write path: group commit over a few pooled connections.

Appends submitted during one event-loop iteration are gathered; a batch goes to the server
as ONE call of the append function (one round trip, one transaction, one commit). Up to
``max_in_flight`` batches run at once on separate connections: while the server commits one
batch, the clients of the other are already preparing their next commands, and the
server's own group commit flushes concurrent commits together. When several connections
are free, the gathered appends are split over them so that this overlap starts at once
instead of every client waiting on the same commit.

Per-stream order: a batch holds each stream once, and an append whose stream is in a batch
still running waits for it, so appends to one stream commit in the order they were made.

A batch that fails as a whole on a data error (an event id stored meanwhile by another
process) is retried one append at a time, so one bad append fails alone. A lost
connection fails the batch with StoreUnavailable: its outcome is unknown to us, and the
append may be retried with the same event ids, which is then a no-op if it had committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from obelisk.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    ObeliskError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from obelisk.observability.histogram import BATCH_BUCKETS, LATENCY_BUCKETS, FastHistogram
from obelisk.store._idempotency import replayed_result
from obelisk.store._jobs import WriteJob, fail, on_settled, settle
from obelisk.store._pg_schema import (
    MAX_EVENTS_PER_TRANSACTION,
    AnyConnection,
    Names,
    append_statements,
)
from obelisk.store._pg_shelf import ConnectionShelf
from obelisk.store.base import EncodedEvent, PreparedAppend
from obelisk.store.records import ANY, NO_STREAM, AppendResult

__all__ = ["PostgresWriter", "is_connection_error", "translate"]

_log = logging.getLogger("obelisk.store.postgres")

# Attempts of one append after its statement hit a version or id that another writer took.
_ATTEMPTS = 3
# Splitting gathered appends over free connections only pays when each batch stays big
# enough to amortise its round trip and commit.
_MIN_SPLIT = 8
# A position's low bits: the index of its row in the statement that wrote it.
_INDEX_MASK = MAX_EVENTS_PER_TRANSACTION - 1
# Streams whose committed head the writer remembers (about 100 bytes each).
_KNOWN_HEADS = 100_000

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # "cannot switch to state N; another operation is in progress": the connection's
    # protocol was left mid-operation by a server going away; it is unusable, not a data error.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    OSError,
)


# A statement cancelled by statement_timeout, or a lock not granted within lock_timeout.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the server or the connection went away (not a data error)."""
    return isinstance(exc, _CONNECTION_ERRORS)


def translate(exc: BaseException, doing: str) -> StoreError:
    """The obelisk error for a failed PostgreSQL call, with the driver's error as cause."""
    if isinstance(exc, TimeoutError):
        error: StoreError = StoreUnavailable(f"PostgreSQL did not answer in time while {doing}")
    elif isinstance(exc, _TIMEOUT_ERRORS):
        error = StoreUnavailable(
            f"PostgreSQL cancelled the statement while {doing} (statement or lock timeout): {exc}"
        )
    elif is_connection_error(exc):
        error = StoreUnavailable(
            f"PostgreSQL is unreachable or dropped the connection while {doing}: {exc}"
        )
    else:
        error = StoreError(f"PostgreSQL error while {doing}: {exc}")
    error.__cause__ = exc
    return error


class PostgresWriter:
    """Gathers appends and commits them in batches (see the module notes)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        names: Names,
        *,
        max_in_flight: int,
        max_batch: int,
        offset: int,
        on_commit: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._names = names
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._statements = append_statements(names, offset)
        self._head = f"SELECT coalesce(max(version), 0) FROM {names.events} WHERE stream_id = $1"
        self._heads_of = (
            f"SELECT stream_id, max(version) FROM {names.events} "
            "WHERE stream_id = ANY($1::text[]) GROUP BY stream_id"
        )
        self._lookup = (
            f"SELECT event_id, stream_id, version, position FROM {names.events} "
            "WHERE event_id = ANY($1::uuid[])"
        )
        self._gathered: list[WriteJob] = []
        # The highest committed version seen per stream: an append expecting a version at
        # or below it needs no head read (see _follow).
        self._heads: dict[str, int] = {}
        # The writer keeps its connections between batches (see _pg_shelf).
        self._shelf = ConnectionShelf(pool, max_in_flight)
        self._running: list[list[WriteJob]] = []
        self._busy_streams: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_scheduled = False
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._closing = False
        # Whether the last append ran alone (nothing else was waiting): a sequential caller.
        # Only then does the next append on an idle writer run in its caller's task.
        self._lone = True
        self.batches = 0
        self.jobs = 0
        # Per batch, read by metrics: how many appends, and how long from start to commit.
        self.batch_sizes = FastHistogram(BATCH_BUCKETS)
        self.batch_seconds = FastHistogram(LATENCY_BUCKETS)
        self._started_at: dict[int, float] = {}

    # -- the caller's side ---------------------------------------------------------------

    def submit(self, parts: list[PreparedAppend]) -> asyncio.Future[list[AppendResult]]:
        """Queue an atomic append; the future resolves once its batch committed."""
        if self._closing:
            raise StoreClosed("the PostgreSQL event store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        self._gathered.append(WriteJob(parts, future))
        self._schedule_pump()
        return future

    def _schedule_pump(self) -> None:
        self._idle.clear()
        if not self._pump_scheduled:
            # At the end of this loop iteration, so every task ready now joins the batch.
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def append(self, parts: list[PreparedAppend]) -> Awaitable[list[AppendResult]]:
        """Append ``parts``: in the caller's task when the writer is idle, else batched.

        A sequential caller (one append at a time, nothing else waiting) gains nothing from
        a batch but pays for the hand-over to the writer's task and back: measured at about
        40 microseconds, a fifth of the whole append. Under concurrency appends keep being
        batched: the fast path is only taken while the last append also ran alone.
        """
        if (
            self._closing
            or not self._lone
            or self._gathered
            or self._running
            or any(part.ids_given for part in parts)  # replays need their own transaction
        ):
            return self.submit(parts)
        job = WriteJob(parts, asyncio.get_running_loop().create_future())
        call = self._append_here(job)
        job.key = call
        return call

    async def _append_here(self, job: WriteJob) -> list[AppendResult]:
        if self._closing or self._gathered or self._running:
            # Something else started between the call and the await: join the batches.
            self._gathered.append(job)
            self._schedule_pump()
            return await job.future
        batch = [job]
        self._start(batch)
        conn: PoolConnectionProxy | None = None
        try:
            conn = await self._shelf.take()
            await self._commit_on(conn, batch)
        except asyncio.CancelledError:
            # The caller was cancelled; the server may still commit the statement. The
            # job settles (releasing whoever waits on it) once the connection is usable
            # again, which asyncpg allows only after the server has finished with it.
            job.future.cancel()
            self._spawn(self._settle_cancelled(batch, conn))
            raise
        except Exception as exc:
            fail(batch, translate(exc, "connecting"))
        if conn is not None and not self._shelf.keep(conn):
            # Returned to the pool in the background: this task must not suspend between
            # the commit and _finish, or a cancellation here would strand the batch.
            self._spawn(self._shelf.give_back(conn))
        self._finish(batch)
        if job.error is not None:
            job.future.cancel()  # nobody awaits it: the error is raised here
            raise job.error
        assert job.results is not None
        return job.results

    async def _settle_cancelled(
        self, batch: list[WriteJob], conn: PoolConnectionProxy | None
    ) -> None:
        try:
            if conn is not None:
                try:
                    await conn.fetchval("SELECT 1")
                except Exception as exc:  # a broken connection: the pool replaces it
                    _log.debug("connection after a cancelled append: %s", exc)
                await self._shelf.give_back(conn)
        finally:
            fail(batch, StoreError("the caller was cancelled during this append"))
            self._finish(batch, maybe_committed=True)

    def when_settled(self, future: object, callback: Callable[[], None]) -> bool:
        """Register ``callback`` for the job of ``future`` if it is still pending."""
        pending = list(self._gathered)
        for jobs in self._running:
            pending.extend(jobs)
        return on_settled(pending, future, callback)

    async def drain(self) -> None:
        """Wait until everything submitted so far has settled."""
        while self._gathered or self._running:
            await self._idle.wait()

    def close(self) -> None:
        """Refuse new appends (those already submitted still commit)."""
        self._closing = True

    def terminate(self) -> None:
        """Fail the appends not yet sent with StoreClosed; batches in flight still settle."""
        self._closing = True
        gathered, self._gathered = self._gathered, []
        fail(gathered, StoreClosed("the PostgreSQL event store was terminated"))
        settle(gathered)
        for task in self._tasks:
            task.cancel()
        if not self._running:
            self._idle.set()

    # -- forming batches -----------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, batch: list[WriteJob]) -> None:
        self._started_at[id(batch)] = time.perf_counter()
        self._running.append(batch)
        self._idle.clear()
        for job in batch:
            for part in job.parts:
                self._busy_streams.add(part.stream_id)

    def _finish(self, batch: list[WriteJob], maybe_committed: bool = False) -> None:
        self._running.remove(batch)
        for job in batch:
            self._busy_streams.difference_update(part.stream_id for part in job.parts)
        self.batches += 1
        self.jobs += len(batch)
        self.batch_sizes.observe(len(batch))
        started = self._started_at.pop(id(batch), None)
        if started is not None:
            self.batch_seconds.observe(time.perf_counter() - started)
        self._lone = len(batch) == 1 and not self._running and not self._gathered
        if maybe_committed or any(job.results for job in batch):
            self._on_commit()
        settle(batch)
        self._pump()

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._gathered and len(self._running) < self._max_in_flight:
            free = self._max_in_flight - len(self._running)
            waiting = len(self._gathered)
            target = -(-waiting // free) if waiting >= free * _MIN_SPLIT else waiting
            batch = self._take(min(target, self._max_batch))
            if not batch:
                break  # everything left waits for a stream in a running batch
            self._start(batch)
            self._spawn(self._run(batch))
        if not self._gathered and not self._running:
            self._idle.set()

    def _take(self, size: int) -> list[WriteJob]:
        """Up to ``size`` gathered jobs whose streams are in no running or taken job."""
        batch: list[WriteJob] = []
        rest: list[WriteJob] = []
        blocked = self._busy_streams
        taken: set[str] = set()
        events = 0
        for job in self._gathered:
            parts = job.parts
            if len(parts) == 1:  # the common append: one stream
                streams: list[str] = [parts[0].stream_id]
                count = len(parts[0].events)
            else:
                streams = [part.stream_id for part in parts]
                count = sum(len(part.events) for part in parts)
            if (
                len(batch) < size
                and events + count <= MAX_EVENTS_PER_TRANSACTION
                and blocked.isdisjoint(streams)
                and taken.isdisjoint(streams)
            ):
                batch.append(job)
                events += count
            else:
                rest.append(job)
            # Later jobs on these streams must not overtake this one.
            taken.update(streams)
        self._gathered = rest
        return batch

    async def _run(self, jobs: list[WriteJob]) -> None:
        try:
            plain = [job for job in jobs if not any(part.ids_given for part in job.parts)]
            retries = [job for job in jobs if any(part.ids_given for part in job.parts)]
            if plain:
                await self._commit_batch(plain)
            for job in retries:
                await self._commit_alone(job)
        except asyncio.CancelledError:
            fail(
                [job for job in jobs if job.results is None and job.error is None],
                StoreClosed("the PostgreSQL event store was terminated during this append"),
            )
        except BaseException as exc:  # a bug must not leave callers waiting forever
            fail(
                [job for job in jobs if job.results is None and job.error is None],
                StoreError(f"append failed unexpectedly: {exc!r}"),
            )
            raise
        finally:
            self._finish(jobs)

    # -- talking to the server -----------------------------------------------------------

    async def _commit_batch(self, jobs: list[WriteJob]) -> None:
        try:
            conn = await self._shelf.take()
        except Exception as exc:
            fail(jobs, translate(exc, "connecting"))
            return
        try:
            await self._commit_on(conn, jobs)
        finally:
            # The writer keeps its connections between batches: borrowing one from the pool
            # per batch cost several event-loop turns. A broken one goes back to the pool,
            # which replaces it.
            await self._shelf.give_back(conn)

    async def _commit_on(self, conn: AnyConnection, jobs: list[WriteJob]) -> None:
        """Commit ``jobs`` in one statement on ``conn``; on a conflict, one by one."""
        try:
            await self._append(conn, jobs)
        except asyncpg.exceptions.DataError as exc:
            fail(jobs, StoreError(f"PostgreSQL refused the append's values: {exc}"))
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, TimeoutError):
                fail(jobs, translate(exc, "committing a batch of appends"))
                return
            # The statement failed as a whole (a version or event id taken meanwhile by
            # another writer, a lock timeout): go one by one, so only the culprit fails.
            for job in jobs:
                await self._commit_alone(job)

    async def release_connections(self) -> None:
        """Give the connections the writer keeps back to the pool (before it closes)."""
        await self._shelf.release_all()

    async def _append(self, conn: AnyConnection, jobs: list[WriteJob]) -> None:
        """Run one append statement for ``jobs`` and record each job's outcome."""
        if len(jobs) == 1 and len(jobs[0].parts) == 1:
            await self._append_solo(conn, jobs[0])
            return
        parts = [part for job in jobs for part in job.parts]
        if len(parts) == len(jobs) and all(len(part.events) == 1 for part in parts):
            if self._all_known(parts):
                await self._append_following(conn, jobs, parts)
                return
            rows = await conn.fetch(self._statements.flat, *_flat_arguments(parts))
        else:
            rows = await conn.fetch(self._statements.batch, *_arguments(jobs))
        _judge(jobs, parts, rows)
        for job in jobs:
            for result in job.results or ():
                self._seen(result.stream_id, result.version)

    async def _append_solo(self, conn: AnyConnection, job: WriteJob) -> None:
        (part,) = job.parts
        events = part.events
        expected = part.expected_version
        if len(events) == 1 and expected >= NO_STREAM and (
            expected == NO_STREAM or self._heads.get(part.stream_id, 0) >= expected
        ):
            await self._follow(conn, job, part)
            return
        if len(events) == 1:
            (event,) = events
            rows = await conn.fetch(
                self._statements.single,
                part.stream_id,
                part.expected_version,
                part.stream_type,
                part.correlation_id,
                part.causation_id,
                event.event_id,
                event.type_name,
                event.schema_version,
                event.data,
                part.trace_context,
            )
        else:
            rows = await conn.fetch(
                self._statements.solo,
                part.stream_id,
                part.expected_version,
                part.stream_type,
                part.correlation_id,
                part.causation_id,
                [event.event_id for event in events],
                [event.type_name for event in events],
                [event.schema_version for event in events],
                [event.data for event in events],
                part.trace_context,
            )
        if rows:
            first, last = rows[0], rows[-1]
            job.results = [AppendResult(part.stream_id, last[1], first[0], last[0])]
            job.error = None
            self._seen(part.stream_id, last[1])
        else:
            actual = await conn.fetchval(self._head, part.stream_id)
            job.results = None
            job.error = ConcurrencyError(part.stream_id, part.expected_version, actual)

    async def _follow(self, conn: AnyConnection, job: WriteJob, part: PreparedAppend) -> None:
        """One event at a version after one known to exist (see ``_pg_schema``)."""
        event = part.events[0]
        expected = part.expected_version
        position = await conn.fetchval(
            self._statements.follow,
            part.stream_id,
            event.event_id,
            event.type_name,
            event.schema_version,
            event.data,
            part.correlation_id,
            part.causation_id,
            part.stream_type,
            expected,
            part.trace_context,
        )
        if position is not None:
            job.results = [AppendResult(part.stream_id, expected + 1, position, position)]
            job.error = None
            self._seen(part.stream_id, expected + 1)
        else:
            actual = await conn.fetchval(self._head, part.stream_id)
            job.results = None
            job.error = ConcurrencyError(part.stream_id, expected, actual)

    def _all_known(self, parts: list[PreparedAppend]) -> bool:
        """Whether every part's expected version is known to exist (see ``_follow``)."""
        heads = self._heads
        for part in parts:
            expected = part.expected_version
            if expected != NO_STREAM and (expected < 0 or heads.get(part.stream_id, 0) < expected):
                return False
        return True

    async def _append_following(
        self, conn: AnyConnection, jobs: list[WriteJob], parts: list[PreparedAppend]
    ) -> None:
        """One event per append, each after a version known to exist: no head is read."""
        rows = await conn.fetch(self._statements.flat_follow, *_flat_arguments(parts))
        written = {position & _INDEX_MASK: position for (position,) in rows}
        refused = [part.stream_id for index, part in enumerate(parts) if index not in written]
        heads: dict[str, int] = {}
        if refused:
            heads = {row[0]: row[1] for row in await conn.fetch(self._heads_of, refused)}
        for index, (job, part) in enumerate(zip(jobs, parts, strict=True)):
            position = written.get(index)
            if position is not None:
                version = part.expected_version + 1
                job.results = [AppendResult(part.stream_id, version, position, position)]
                job.error = None
                self._seen(part.stream_id, version)
            else:
                job.results = None
                job.error = ConcurrencyError(
                    part.stream_id, part.expected_version, heads.get(part.stream_id, 0)
                )

    def _seen(self, stream_id: str, version: int) -> None:
        """Remember that ``version`` of ``stream_id`` is committed (so all below it are)."""
        heads = self._heads
        if len(heads) >= _KNOWN_HEADS and stream_id not in heads:
            heads.clear()  # a bound, not an LRU: forgetting only costs a head read
        if heads.get(stream_id, 0) < version:
            heads[stream_id] = version

    async def _commit_alone(self, job: WriteJob) -> None:
        """One job in its own transaction, retried while other writers take its versions."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    job.results = await self._write_one(conn, job)
                    job.error = None
                return
            except (ConcurrencyError, IdempotencyConflict) as exc:
                job.results, job.error = None, exc
                return
            except asyncpg.exceptions.UniqueViolationError as exc:
                # Another writer committed this version (or these event ids) after our
                # statement read the head: the next attempt reads it again, and fails the
                # check, replays the ids, or names the conflict.
                job.results, job.error = None, _data_error(exc, job)
                if attempt == _ATTEMPTS - 1:
                    return
            except Exception as exc:
                job.results, job.error = None, translate(exc, "committing an append")
                return

    async def _write_one(self, conn: AnyConnection, job: WriteJob) -> list[AppendResult]:
        results: list[AppendResult | None] = [None] * len(job.parts)
        for index, part in enumerate(job.parts):
            if part.ids_given:
                results[index] = await self._replayed(conn, part)
        todo = [part for part, result in zip(job.parts, results, strict=True) if result is None]
        if todo:
            sub = WriteJob(todo, job.future)
            await self._append(conn, [sub])
            if sub.error is not None:
                raise sub.error
            assert sub.results is not None
            fresh = iter(sub.results)
            results = [result if result is not None else next(fresh) for result in results]
        return [result for result in results if result is not None]

    async def _replayed(self, conn: AnyConnection, part: PreparedAppend) -> AppendResult | None:
        ids = [event.event_id for event in part.events]
        rows = await conn.fetch(self._lookup, ids)
        if not rows:
            return None
        found = {row[0]: (row[1], row[2], row[3]) for row in rows}
        return replayed_result(part.stream_id, [found.get(event_id) for event_id in ids])


def _arguments(jobs: list[WriteJob]) -> tuple[list[Any] | None, ...]:
    """The batch statement's arrays; a column that holds only its default goes as NULL.

    The statement reads a NULL array as all-default (``unnest`` pads it, ``coalesce``
    fills it in). Most batches are one event per append with no correlation ids: five of
    the twelve arrays then need not be built, sent, or checked element by element by the
    driver.
    """
    parts = [part for job in jobs for part in job.parts]
    events = [event for part in parts for event in part.events]
    streams, expected, types, correlation, causation, traces = _part_arrays(parts)
    return (
        streams,
        expected,
        types,
        None if len(parts) == len(jobs) else [n for n, job in enumerate(jobs) for _ in job.parts],
        correlation,
        causation,
        None if len(events) == len(parts) else [
            n for n, part in enumerate(parts, 1) for _ in part.events
        ],
        *_event_arrays(events),
        traces,
    )


def _flat_arguments(parts: list[PreparedAppend]) -> tuple[list[Any] | None, ...]:
    """The flat statement's arrays (one event per append); defaults go as NULL arrays."""
    streams, expected, types, correlation, causation, traces = _part_arrays(parts)
    events = [part.events[0] for part in parts]
    return (streams, expected, types, correlation, causation, *_event_arrays(events), traces)


def _part_arrays(parts: list[PreparedAppend]) -> tuple[list[Any] | None, ...]:
    """Per part: stream, expected version, and type, correlation, causation and trace
    context (each None when no part has one)."""
    return (
        [part.stream_id for part in parts],
        [part.expected_version for part in parts],
        _or_null([part.stream_type for part in parts]),
        _or_null([part.correlation_id for part in parts]),
        _or_null([part.causation_id for part in parts]),
        _or_null([part.trace_context for part in parts]),
    )


def _event_arrays(events: list[EncodedEvent]) -> tuple[list[Any] | None, ...]:
    """Per event: id, type, schema version (None when all are 1) and data."""
    schemas = [event.schema_version for event in events]
    return (
        [event.event_id for event in events],
        [event.type_name for event in events],
        None if all(v == 1 for v in schemas) else schemas,
        [event.data for event in events],
    )


def _or_null(values: list[Any]) -> list[Any] | None:
    """``values``, or None (all-default for the statement) when none of them is set."""
    return values if any(values) else None


def _judge(jobs: list[WriteJob], parts: list[PreparedAppend], rows: list[Any]) -> None:
    """Turn the batch statement's per-part rows into each job's results or error."""
    if len(rows) != len(parts):
        fail(jobs, StoreError(f"the append statement returned {len(rows)} rows for {len(parts)}"))
        return
    index = 0
    for job in jobs:
        results: list[AppendResult] = []
        error: BaseException | None = None
        for part in job.parts:
            ok, actual, first = rows[index]
            index += 1
            expected = part.expected_version
            if ok:
                count = len(part.events)
                results.append(
                    AppendResult(part.stream_id, actual + count, first, first + count - 1)
                )
            elif error is None and expected != ANY and expected != actual:
                error = ConcurrencyError(part.stream_id, expected, actual)
        if error is None and len(results) != len(job.parts):
            error = StoreError("the append statement rejected an append without a reason")
        job.results, job.error = (None, error) if error is not None else (results, None)


def _data_error(exc: asyncpg.exceptions.UniqueViolationError, job: WriteJob) -> ObeliskError:
    """The error a job gets when its last attempt still hit a unique index."""
    error: ObeliskError
    if (exc.constraint_name or "").endswith("event_id"):
        error = IdempotencyConflict(
            "an event id of this append is already stored by another append"
        )
    else:
        part = job.parts[0]
        error = StoreError(
            f"other writers kept taking the next version of {part.stream_id!r} "
            f"({_ATTEMPTS} attempts): {exc}"
        )
    error.__cause__ = exc
    return error
