"""One group-commit batch on the SQLite write connection: check, stage, insert.

Functions here run on whichever thread currently owns the write connection (the event
loop or the commit thread, never both at once); they never commit, except
:func:`commit_each_alone`.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import msgspec

from obelisk.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    ObeliskError,
    StoreError,
    StoreUnavailable,
)
from obelisk.store._idempotency import replayed_result
from obelisk.store._jobs import WriteJob, fail
from obelisk.store.base import PreparedAppend
from obelisk.store.records import ANY, NO_STREAM, AppendResult

__all__ = [
    "HeadCache",
    "Staged",
    "WriteJob",
    "commit_each_alone",
    "fail",
    "is_busy",
    "rollback",
    "stage_and_insert",
    "translate",
]

_INSERT_EVENT = (
    "INSERT INTO obelisk_events (position, stream_id, version, event_id, event_type, "
    "schema_version, data, recorded_at, correlation_id, causation_id, stream_type, "
    "trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HEAD = (
    "SELECT version FROM obelisk_events WHERE stream_id = ? ORDER BY version DESC LIMIT 1"
)


class HeadCache:
    """Stream heads this connection committed, valid while no other connection commits.

    Checking an expected version then needs no query for a stream this process wrote.
    ``PRAGMA data_version`` changes exactly when another connection (or process) has
    committed to the file; the cache is dropped then, and whenever a commit's outcome is
    uncertain.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.heads: dict[str, int] = {}
        self.last_position: int | None = None  # the log's end, by the same rule
        self._limit = limit
        self._data_version: int | None = None

    def sync(self, conn: sqlite3.Connection) -> None:
        """Drop everything if another connection committed since the last call."""
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version != self._data_version:
            self.clear()
            self._data_version = data_version

    def remember(self, heads: dict[str, int], last_position: int) -> None:
        """Record the heads and the log's end after a batch that committed."""
        if len(self.heads) + len(heads) > self._limit:
            self.heads.clear()  # a miss costs one indexed query: no need for true LRU
        self.heads.update(heads)
        self.last_position = last_position

    def clear(self) -> None:
        """Forget everything (another writer committed, or a commit's effect is unknown)."""
        self.heads.clear()
        self.last_position = None


class _Batch:
    """What one transaction will write, built while checking the jobs in order."""

    __slots__ = ("heads", "ids", "known", "next_position", "rows", "touched", "trust_absence")

    def __init__(self, next_position: int, known: dict[str, int], trust_absence: bool) -> None:
        self.next_position = next_position
        self.known = known
        self.trust_absence = trust_absence
        self.heads: dict[str, int] = {}
        self.touched: dict[str, int] = {}
        self.ids: dict[bytes, tuple[str, int, int]] = {}
        self.rows: list[tuple[Any, ...]] = []


_NO_HEADS: dict[str, int] = {}


class Staged(msgspec.Struct, gc=False):
    """What a staged batch will have written once it commits: for the head cache."""

    heads: dict[str, int]
    last_position: int


def stage_and_insert(
    conn: sqlite3.Connection, jobs: list[WriteJob], cache: HeadCache | None = None
) -> Staged:
    """Open a write transaction, check every job, insert the accepted rows; no COMMIT.

    Each job ends with either ``results`` (staged) or ``error`` (rejected, nothing of it
    staged). Returns the new head of every stream written, for ``cache`` once committed.
    Raises sqlite3.Error if the transaction itself fails; the caller rolls back. With a
    cache, an append expecting NO_STREAM to a stream the cache does not know is not
    looked up: the unique (stream_id, version) index refuses version 1 of an existing
    stream, and the caller then redoes the batch job by job, without the cache.
    """
    # BEGIN IMMEDIATE takes the write lock first, so the heads read below cannot change
    # before COMMIT, even with other processes writing the same file.
    conn.execute("BEGIN IMMEDIATE")
    if cache is not None:
        cache.sync(conn)
    last = cache.last_position if cache is not None else None
    if last is None:
        (last,) = conn.execute(
            "SELECT COALESCE(MAX(position), 0) FROM obelisk_events"
        ).fetchone()
    if cache is not None:
        batch = _Batch(last + 1, cache.heads, True)
        _prefetch_heads(conn, batch, jobs)
    else:
        batch = _Batch(last + 1, _NO_HEADS, False)
    now = time.time()
    for job in jobs:
        job.results = job.error = None
        try:
            job.results = _stage(conn, batch, job.parts, now)
        except ObeliskError as exc:
            job.error = exc
    if batch.rows:
        conn.executemany(_INSERT_EVENT, batch.rows)
    return Staged(batch.touched, batch.next_position - 1)


def _prefetch_heads(conn: sqlite3.Connection, batch: _Batch, jobs: list[WriteJob]) -> None:
    # One query for every head the checks will need and the cache lacks, instead of
    # one query per append.
    known = batch.known
    wanted = [
        part.stream_id
        for job in jobs
        for part in job.parts
        if part.expected_version != NO_STREAM and part.stream_id not in known
    ]
    if not wanted:
        return
    ids = list(dict.fromkeys(wanted))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found = dict(
            conn.execute(
                "SELECT stream_id, MAX(version) FROM obelisk_events "
                f"WHERE stream_id IN ({', '.join('?' * len(chunk))}) GROUP BY stream_id",
                chunk,
            ).fetchall()
        )
        for stream_id in chunk:
            batch.heads[stream_id] = found.get(stream_id, 0)


def commit_each_alone(conn: sqlite3.Connection, jobs: list[WriteJob]) -> None:
    """Commit every job in its own transaction, so one bad job fails by itself.

    The slow path after a batch hit a unique-index violation: only an event id reused
    further into an append (the checks catch the rest) gets here.
    """
    for job in jobs:
        try:
            stage_and_insert(conn, [job])
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            rollback(conn)
            job.results = None
            job.error = IdempotencyConflict(
                "an event id of this append is already stored by another append"
            )
        except sqlite3.Error as exc:
            rollback(conn)
            job.results = None
            job.error = translate(exc)


def _stage(
    conn: sqlite3.Connection, batch: _Batch, parts: list[PreparedAppend], now: float
) -> list[AppendResult]:
    """Check one job against the heads; stage its rows only if every part passes."""
    outcomes: list[AppendResult | None] = []
    for part in parts:
        replay = _replayed(conn, batch, part) if part.ids_given else None
        if replay is None:
            expected = part.expected_version
            current = _head(conn, batch, part.stream_id, expected)
            if expected != ANY and expected != current:
                raise ConcurrencyError(part.stream_id, expected, current)
        outcomes.append(replay)
    # Every part passed. Nothing above changed the batch, so a rejected job leaves no
    # trace in the transaction: no savepoint needed.
    results: list[AppendResult] = []
    position = batch.next_position
    rows = batch.rows
    for part, replay in zip(parts, outcomes, strict=True):
        if replay is not None:
            results.append(replay)
            continue
        sid = part.stream_id
        version = batch.heads[sid]
        # The stream's type rides on its first event only (NULL costs no space).
        stream_type = part.stream_type if version == 0 else None
        first = position
        correlation, causation, trace = part.correlation_id, part.causation_id, part.trace_context
        for encoded in part.events:
            version += 1
            rows.append(
                (position, sid, version, encoded.event_id, encoded.type_name,
                 encoded.schema_version, encoded.data, now, correlation, causation,
                 stream_type, trace)
            )
            stream_type = None
            if part.ids_given:
                batch.ids[encoded.event_id] = (sid, version, position)
            position += 1
        batch.heads[sid] = batch.touched[sid] = version
        results.append(AppendResult(sid, version, first, position - 1))
    batch.next_position = position
    return results


def _head(conn: sqlite3.Connection, batch: _Batch, stream_id: str, expected: int) -> int:
    version = batch.heads.get(stream_id)
    if version is None:
        version = batch.known.get(stream_id)
        if version is None:
            if batch.trust_absence and expected == NO_STREAM:
                version = 0  # the unique index catches a stream that does exist
            else:
                row = conn.execute(_HEAD, (stream_id,)).fetchone()
                version = row[0] if row is not None else 0
        batch.heads[stream_id] = version
    return version


def _replayed(conn: sqlite3.Connection, batch: _Batch, part: PreparedAppend) -> AppendResult | None:
    first_id = part.events[0].event_id
    if first_id not in batch.ids and _lookup_id(conn, first_id) is None:
        return None
    found = [batch.ids.get(e.event_id) or _lookup_id(conn, e.event_id) for e in part.events]
    return replayed_result(part.stream_id, found)


def _lookup_id(conn: sqlite3.Connection, event_id: bytes) -> tuple[str, int, int] | None:
    row = conn.execute(
        "SELECT stream_id, version, position FROM obelisk_events WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds the write lock."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def translate(exc: sqlite3.Error) -> StoreError:
    """The obelisk error for a failed write, with the cause in words and as ``__cause__``."""
    error = _describe(exc)
    error.__cause__ = exc  # as `raise ... from exc` would: the driver's error stays reachable
    return error


def _describe(exc: sqlite3.Error) -> StoreError:
    message = str(exc).lower()
    if "readonly" in message or "read-only" in message:
        hint = "the database file or its folder is read-only"
    elif is_busy(exc):
        hint = "the database is locked by another connection or process (busy timeout expired)"
    elif "full" in message:
        hint = "the disk (or the configured size limit) is full"
    elif "disk i/o" in message:
        hint = "the disk reported an I/O error"
    else:
        return StoreError(f"SQLite error: {exc}; the append was not written")
    return StoreUnavailable(f"{hint}: {exc}; the append was not written")
