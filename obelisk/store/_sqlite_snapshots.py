"""Snapshots in the SQLite file: their table's SQL, and a writer that keeps them off the
event loop and off the appends' fsync.

Snapshots are written on a connection of their own, in a worker thread, with
``synchronous = NORMAL``: in WAL mode that commit does not fsync (the next append's commit
or a checkpoint makes it durable, and losing the last snapshots to a power cut costs only a
longer load). Its write lock is held for one small upsert; the appends' writer waits for
it like it waits for any other process.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import Final

from obelisk.errors import StoreError, StoreUnavailable
from obelisk.store.records import Snapshot

__all__ = ["FROM_SNAPSHOT", "LOAD_SNAPSHOT", "STREAM_SIZES", "SnapshotWriter"]

LOAD_SNAPSHOT: Final = (
    "SELECT stream_id, version, aggregate_type, schema_version, state, taken_at "
    "FROM obelisk_snapshots WHERE stream_id = ?"
)
# A load's one query: the events from the snapshot's version on, the snapshot's columns on
# the row of its own version (the first one). {type_key} is the store's type-key column.
FROM_SNAPSHOT: Final = (
    "SELECT e.k, e.data, s.version, s.aggregate_type, s.schema_version, s.state, s.taken_at "
    "FROM (SELECT version, {type_key} AS k, data FROM obelisk_events WHERE stream_id = ?1 "
    "AND version >= coalesce((SELECT version FROM obelisk_snapshots WHERE stream_id = ?1), 1)"
    ") e LEFT JOIN obelisk_snapshots s ON s.stream_id = ?1 AND s.version = e.version "
    "ORDER BY e.version"
)
# A snapshot replaces the stored one unless that one is newer: two processes may take one
# of the same stream at once, and the later version is the more useful.
_UPSERT: Final = (
    "INSERT INTO obelisk_snapshots "
    "(stream_id, version, aggregate_type, schema_version, state, taken_at) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, "
    "aggregate_type = excluded.aggregate_type, schema_version = excluded.schema_version, "
    "state = excluded.state, taken_at = excluded.taken_at "
    "WHERE excluded.version >= obelisk_snapshots.version"
)
_DELETE: Final = "DELETE FROM obelisk_snapshots WHERE stream_id = ? AND version = ?"
STREAM_SIZES: Final = (
    "SELECT e.stream_id, "
    "(SELECT f.stream_type FROM obelisk_events f "
    "WHERE f.stream_id = e.stream_id AND f.version = 1), "
    "COUNT(*), SUM(LENGTH(e.data)), s.version "
    "FROM obelisk_events e LEFT JOIN obelisk_snapshots s ON s.stream_id = e.stream_id "
    "GROUP BY e.stream_id ORDER BY COUNT(*) DESC, e.stream_id LIMIT ?"
)


class SnapshotWriter:
    """Owns the snapshot connection; one write at a time, each in a worker thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def save(self, snapshots: Sequence[Snapshot]) -> None:
        rows = [
            (s.stream_id, s.version, s.aggregate_type, s.schema_version, s.state, s.taken_at)
            for s in snapshots
        ]
        if rows:
            await self._write(_UPSERT, rows)

    async def delete(self, stream_id: str, version: int) -> None:
        await self._write(_DELETE, [(stream_id, version)])

    async def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        async with self._lock:
            await asyncio.to_thread(self._write_now, sql, rows)

    def _write_now(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite could not write snapshots: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite refused the snapshots: {exc}") from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
