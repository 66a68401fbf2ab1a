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
from collections.abc import Callable
from typing import Any

import asyncpg

from obelisk.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    ObeliskError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from obelisk.store._idempotency import replayed_result
from obelisk.store._jobs import WriteJob, fail, on_settled, settle
from obelisk.store._pg_schema import MAX_EVENTS_PER_TRANSACTION, AnyConnection, Names
from obelisk.store.base import PreparedAppend
from obelisk.store.records import ANY, AppendResult

__all__ = ["PostgresWriter", "is_connection_error", "translate"]

# Splitting gathered appends over free connections only pays when each batch stays big
# enough to amortise its round trip and commit.
_MIN_SPLIT = 8

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
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
            f"PostgreSQL cancelled the statement while {doing} (statement or lock timeout): "
            f"{exc}"
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
        on_commit: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._names = names
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._call = f"SELECT * FROM {names.append}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        self._lookup = (
            f"SELECT event_id, stream_id, version, position FROM {names.events} "
            "WHERE event_id = ANY($1::uuid[])"
        )
        self._gathered: list[WriteJob] = []
        self._running: list[list[WriteJob]] = []
        self._busy_streams: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_scheduled = False
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.batches = 0
        self.jobs = 0

    # -- the caller's side ---------------------------------------------------------------

    def submit(self, parts: list[PreparedAppend]) -> asyncio.Future[list[AppendResult]]:
        """Queue an atomic append; the future resolves once its batch committed."""
        if self._closing:
            raise StoreClosed("the PostgreSQL event store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        self._gathered.append(WriteJob(parts, future))
        self._idle.clear()
        if not self._pump_scheduled:
            # At the end of this loop iteration, so every task ready now joins the batch.
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return future

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

    def _pump(self) -> None:
        self._pump_scheduled = False
        loop = asyncio.get_running_loop()
        while self._gathered and len(self._running) < self._max_in_flight:
            free = self._max_in_flight - len(self._running)
            waiting = len(self._gathered)
            target = -(-waiting // free) if waiting >= free * _MIN_SPLIT else waiting
            batch = self._take(min(target, self._max_batch))
            if not batch:
                break  # everything left waits for a stream in a running batch
            self._running.append(batch)
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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
            streams = [part.stream_id for part in job.parts]
            count = sum(len(part.events) for part in job.parts)
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
        for job in batch:
            blocked.update(part.stream_id for part in job.parts)
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
            self._running.remove(jobs)
            for job in jobs:
                self._busy_streams.difference_update(part.stream_id for part in job.parts)
            self.batches += 1
            self.jobs += len(jobs)
            if any(job.results for job in jobs):
                self._on_commit()
            settle(jobs)
            self._pump()

    # -- talking to the server -----------------------------------------------------------

    async def _commit_batch(self, jobs: list[WriteJob]) -> None:
        parts = [part for job in jobs for part in job.parts]
        args = _arguments(jobs)
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(self._call, *args)
        except asyncpg.exceptions.DataError as exc:
            fail(jobs, StoreError(f"PostgreSQL refused the append's values: {exc}"))
            return
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, TimeoutError):
                fail(jobs, translate(exc, "committing a batch of appends"))
                return
            if len(jobs) == 1:
                fail(jobs, _data_error(exc))
                return
            # A data error fails the whole statement: find the culprit by going one by one.
            for job in jobs:
                await self._commit_alone(job)
            return
        _judge(jobs, parts, rows)

    async def _commit_alone(self, job: WriteJob) -> None:
        for attempt in range(2):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    job.results = await self._write_one(conn, job)
                    job.error = None
                return
            except (ConcurrencyError, IdempotencyConflict) as exc:
                job.results, job.error = None, exc
                return
            except asyncpg.exceptions.UniqueViolationError as exc:
                # An id stored meanwhile by another writer: the next lookup sees it and
                # replays, or names the conflict.
                job.results, job.error = None, _data_error(exc)
                if attempt == 1:
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
            rows = await conn.fetch(self._call, *_arguments([sub]))
            _judge([sub], todo, rows)
            if sub.error is not None:
                raise sub.error
            assert sub.results is not None
            fresh = iter(sub.results)
            results = [result if result is not None else next(fresh) for result in results]
        return [result for result in results if result is not None]

    async def _replayed(
        self, conn: AnyConnection, part: PreparedAppend
    ) -> AppendResult | None:
        ids = [event.event_id for event in part.events]
        rows = await conn.fetch(self._lookup, ids)
        if not rows:
            return None
        found = {row[0]: (row[1], row[2], row[3]) for row in rows}
        return replayed_result(part.stream_id, [found.get(event_id) for event_id in ids])


def _arguments(jobs: list[WriteJob]) -> tuple[list[Any], ...]:
    streams: list[str] = []
    expected: list[int] = []
    stream_types: list[str | None] = []
    job_index: list[int] = []
    correlation: list[str | None] = []
    causation: list[str | None] = []
    event_part: list[int] = []
    ids: list[bytes] = []
    types: list[str] = []
    schemas: list[int] = []
    data: list[bytes] = []
    part_number = 0
    for number, job in enumerate(jobs):
        for part in job.parts:
            part_number += 1  # 1-based, as WITH ORDINALITY counts
            streams.append(part.stream_id)
            expected.append(part.expected_version)
            stream_types.append(part.stream_type)
            job_index.append(number)
            correlation.append(part.correlation_id)
            causation.append(part.causation_id)
            for event in part.events:
                event_part.append(part_number)
                ids.append(event.event_id)
                types.append(event.type_name)
                schemas.append(event.schema_version)
                data.append(event.data)
    return (
        streams, expected, stream_types, job_index, correlation, causation,
        event_part, ids, types, schemas, data,
    )  # fmt: skip


def _judge(jobs: list[WriteJob], parts: list[PreparedAppend], rows: list[Any]) -> None:
    """Turn the function's per-part rows into each job's results or error."""
    if len(rows) != len(parts):
        fail(jobs, StoreError(f"append function returned {len(rows)} rows for {len(parts)}"))
        return
    index = 0
    for job in jobs:
        results: list[AppendResult] = []
        error: BaseException | None = None
        for part in job.parts:
            ok, version, first = rows[index]
            index += 1
            expected = part.expected_version
            if ok:
                last = first + len(part.events) - 1
                results.append(AppendResult(part.stream_id, version, first, last))
            elif error is None and expected != ANY and expected != version:
                error = ConcurrencyError(part.stream_id, expected, version)
        if error is None and len(results) != len(job.parts):
            error = StoreError("the append function rejected an append without a reason")
        job.results, job.error = (None, error) if error is not None else (results, None)


def _data_error(exc: BaseException) -> ObeliskError:
    if isinstance(exc, _TIMEOUT_ERRORS):
        return translate(exc, "committing an append")
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        error: ObeliskError = IdempotencyConflict(
            "an event id of this append is already stored by another append"
        )
    else:
        error = StoreError(f"PostgreSQL refused the append: {exc}")
    error.__cause__ = exc
    return error
