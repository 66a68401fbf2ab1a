"""SQLiteEventStore: the embedded default, on a WAL-mode file.

Writes go through one writer thread that commits concurrent appends together (see
``_sqlite_writer``). Reads run on the event loop's own connection: in WAL mode a reader
works from a snapshot and never waits for the writer, and a point read costs less than
handing it to a thread. Long reads yield to the loop every ``_CHUNK`` rows.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from obelisk.domain.events import Event
from obelisk.errors import StoreClosed, StoreError, StoreUnavailable
from obelisk.store._sqlite_schema import ensure_schema
from obelisk.store._sqlite_writer import SQLiteWriter
from obelisk.store.base import EventStore, check_limit, prepare_appends
from obelisk.store.codec import EventCodec, JsonCodec
from obelisk.store.records import AppendRequest, AppendResult, StoredEvent, StreamInfo
from obelisk.store.records import validate_stream_id as _valid

__all__ = ["SQLiteEventStore", "Synchronous"]

Synchronous = Literal["FULL", "NORMAL"]
_CHUNK: Final = 2000
_ENVELOPE = (
    "SELECT position, stream_id, version, event_id, event_type, schema_version, data, "
    "recorded_at, correlation_id, causation_id FROM obelisk_events "
)


class SQLiteEventStore(EventStore):
    """An event store in one SQLite file.

    Args:
        path: the database file (created with its folder's permissions if missing).
        synchronous: ``"FULL"`` (default) fsyncs the WAL on every commit, so an
            acknowledged append survives power loss. ``"NORMAL"`` fsyncs only at
            checkpoints: faster, still safe against a process crash, but the last
            commits can be lost when the machine loses power.
        codec: payload format; a database keeps the codec it was created with.
        busy_timeout: seconds to wait for a write lock held by another process before
            failing the pending appends with StoreUnavailable.
        max_size_bytes: an optional quota; appends past it fail with StoreUnavailable.
        max_batch: the most appends committed in one transaction.
        inline_solo_commits: commit a lone append on the event loop (no thread hand-off,
            lower latency for one client; blocks the loop for that commit's fsync).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        codec: EventCodec | None = None,
        busy_timeout: float = 5.0,
        max_size_bytes: int | None = None,
        max_batch: int = 4096,
        inline_solo_commits: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.codec = codec if codec is not None else JsonCodec()
        self.busy_timeout = busy_timeout
        self.max_size_bytes = max_size_bytes
        self.max_batch = max_batch
        self.inline_solo_commits = inline_solo_commits
        self._writer: SQLiteWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteEventStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    # -- lifecycle -----------------------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if self.max_size_bytes is not None:
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA max_page_count = {max(self.max_size_bytes // page_size, 1)}")
        ensure_schema(conn, self.codec.name)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
        return conn

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._closed = False
        writer = SQLiteWriter(
            self._connect_writer,
            max_batch=self.max_batch,
            inline_solo_commits=self.inline_solo_commits,
        )
        try:
            await asyncio.to_thread(writer.start)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._writer = writer
        reader = self._connect()
        reader.execute("PRAGMA query_only = ON")
        reader.execute("PRAGMA mmap_size = 268435456")
        self._reader = reader

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        self._closed = True
        try:
            if writer is not None:
                writer.stop()  # queued appends are committed before the thread ends
                await asyncio.to_thread(writer.join)
        except BaseException:
            if writer is not None:
                writer.terminate()
            raise
        finally:
            self._close_reader()

    def terminate(self) -> None:
        writer, self._writer = self._writer, None
        self._closed = True
        if writer is not None:
            writer.terminate()
        self._close_reader()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreClosed(f"{self!r} is not open (use `async with store:` or `open()`)")
        return self._reader

    # -- writing -------------------------------------------------------------------------

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if self._writer is None:
            raise StoreClosed(f"{self!r} is not open")
        parts = prepare_appends(requests, self.codec)
        return await self._writer.submit(parts)

    # -- reading -------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Rows of ``sql``, yielding to the event loop between chunks of a long result."""
        try:
            cursor = self._read_conn().execute(sql, params)
            rows = cursor.fetchmany(_CHUNK)
            if len(rows) < _CHUNK:
                return rows
            while True:
                await asyncio.sleep(0)
                more = cursor.fetchmany(_CHUNK)
                rows.extend(more)
                if len(more) < _CHUNK:
                    return rows
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

    def _envelopes(self, rows: list[Any]) -> list[StoredEvent]:
        decode = self.codec.decode
        return [
            StoredEvent(pos, sid, ver, decode(typ, sv, data, sid, ver, pos), eid, at, corr, caus)
            for pos, sid, ver, eid, typ, sv, data, at, corr, caus in rows
        ]

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        check_limit(limit)
        sql, params = _stream_query(_ENVELOPE, _valid(stream_id), from_version, to_version, limit)
        return self._envelopes(await self._fetch(sql, params))

    async def read_stream_events(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[Event]:
        sql, params = _stream_query(
            "SELECT position, version, event_type, schema_version, data FROM obelisk_events ",
            _valid(stream_id),
            from_version,
            to_version,
            None,
        )
        rows = await self._fetch(sql, params)
        typed = self.codec._typed
        out: list[Event] = []
        append = out.append
        for position, version, type_name, schema_version, data in rows:
            # Inline fast path: the common row is the current schema of a known type.
            entry = typed.get(type_name)
            if entry is not None and entry[0].schema_version == schema_version:
                try:
                    append(entry[1].decode(data))
                    continue
                except Exception:
                    pass  # fall through to decode(), which raises CorruptEvent with context
            append(self.codec.decode(type_name, schema_version, data, stream_id, version, position))
        return out

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, types: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        check_limit(limit)
        sql = _ENVELOPE + "WHERE position > ? "
        params: list[Any] = [after]
        if types is not None:
            names = list(types)
            sql += f"AND event_type IN ({', '.join('?' * len(names))}) "
            params.extend(names)
        sql += "ORDER BY position LIMIT ?"
        params.append(limit)
        return self._envelopes(await self._fetch(sql, params))

    async def last_position(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(position), 0) FROM obelisk_events", ())
        return int(rows[0][0])

    async def stream_version(self, stream_id: str) -> int:
        rows = await self._fetch(
            "SELECT version FROM obelisk_streams WHERE stream_id = ?", (_valid(stream_id),)
        )
        return int(rows[0][0]) if rows else 0

    async def list_streams(self, *, after: str | None = None, limit: int = 100) -> list[StreamInfo]:
        rows = await self._fetch(
            "SELECT s.stream_id, s.stream_type, s.version, "
            "(SELECT COUNT(*) FROM obelisk_events e WHERE e.stream_id = s.stream_id) "
            "FROM obelisk_streams s WHERE s.stream_id > ? ORDER BY s.stream_id LIMIT ?",
            (after or "", limit),
        )
        return [StreamInfo(*row) for row in rows]


def _stream_query(
    select: str, stream_id: str, from_version: int, to_version: int | None, limit: int | None
) -> tuple[str, list[Any]]:
    sql = select + "WHERE stream_id = ? AND version >= ? "
    params: list[Any] = [stream_id, from_version]
    if to_version is not None:
        sql += "AND version <= ? "
        params.append(to_version)
    sql += "ORDER BY version"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


