"""PostgresEventStore: the production store, on asyncpg with a connection pool.

Writers never lock a table: versions are guarded by the unique (stream_id, version) index
alone, and group commit sends concurrent appends as one statement (see ``_pg_writer``).
Readers stay gap-free without any timeout: positions carry the writing transaction's id,
and ``read_all`` returns only positions below the oldest transaction still in flight (see
``_pg_schema``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final
from uuid import UUID

import asyncpg

from obelisk.domain.events import Event
from obelisk.errors import ObeliskError, StoreClosed, ValidationError
from obelisk.store._envelopes import decode_envelopes, decode_payloads, decode_rest
from obelisk.store._pg_import import ImportResult, ImportStopped, import_appends
from obelisk.store._pg_loader import StreamLoader
from obelisk.store._pg_schema import (
    INDEX_BITS,
    MAX_EVENTS_PER_TRANSACTION,
    Names,
    append_statements,
    ensure_schema,
)
from obelisk.store._pg_shelf import ConnectionShelf
from obelisk.store._pg_writer import PostgresWriter, translate
from obelisk.store.base import (
    EventStore,
    check_int64,
    check_limit,
    check_position,
    check_stream_after,
    check_types,
    check_versions,
    event_id_bytes,
    prepare_appends,
    validate_snapshots,
)
from obelisk.store.codec import EventCodec, JsonCodec
from obelisk.store.records import (
    AppendRequest,
    AppendResult,
    Snapshot,
    StoredEvent,
    StreamInfo,
    StreamSize,
)
from obelisk.store.records import validate_stream_id as _valid
from obelisk.store.subscription import WakeChannel

__all__ = ["ImportResult", "ImportStopped", "PostgresEventStore"]

_log = logging.getLogger("obelisk.store.postgres")
_TYPE_KEY: Final = (
    "CASE schema_version WHEN 1 THEN event_type "
    "ELSE event_type || chr(31) || schema_version::text END"
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Event ids travel as their 16 raw bytes both ways: no UUID objects per row.
    await conn.set_type_codec(
        "uuid",
        schema="pg_catalog",
        encoder=lambda value: value,
        decoder=lambda value: value,
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset.

    asyncpg's default runs ``RESET ALL; UNLISTEN *; ...`` on every release: one more round
    trip per append (measured: 4 round trips per sequential command instead of 2). The
    store's pooled connections never change session state: LISTEN runs on connections of
    its own, and its only advisory lock is transaction-scoped.
    """


class PostgresEventStore(EventStore):
    """An event store in a PostgreSQL database (15 or newer).

    Args:
        dsn: a libpq connection URI, ``postgresql://user:password@host:port/database``.
        schema: the PostgreSQL schema holding the tables (created if missing).
        prefix: prefix of the table names; several stores can share one schema.
        codec: payload format; a store keeps the codec it was created with.
        pool_min_size / pool_max_size: the connection pool's bounds. Reads take one
            connection each for the duration of a query; appends use at most
            ``max_in_flight``.
        max_in_flight: group-commit batches running at once (each on its own connection).
        max_batch: the most appends in one batch.
        statement_timeout / lock_timeout: server-side limits in seconds for every
            statement (0 disables): no call waits forever on a stuck lock.
        command_timeout: client-side limit in seconds for one call.
        connect_timeout: seconds to wait for a new connection.
        notify_interval: commits within this many seconds share one NOTIFY to other
            processes' subscribers (the most it delays their wake-up).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        prefix: str = "obelisk_",
        codec: EventCodec | None = None,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        max_in_flight: int = 2,
        max_batch: int = 4096,
        statement_timeout: float = 30.0,
        lock_timeout: float = 10.0,
        command_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        notify_interval: float = 0.002,
    ) -> None:
        self.names = Names(schema, prefix)
        if max_in_flight < 1 or pool_max_size < max_in_flight:
            raise ValidationError("need 1 <= max_in_flight <= pool_max_size")
        if pool_min_size < 0 or pool_min_size > pool_max_size:
            raise ValidationError("need 0 <= pool_min_size <= pool_max_size")
        self.dsn = dsn
        self.codec = codec if codec is not None else JsonCodec()
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.notify_interval = notify_interval
        self._pool: asyncpg.Pool | None = None
        self._readers: ConnectionShelf | None = None
        self._loader: StreamLoader | None = None
        self._writer: PostgresWriter | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._notify_task: asyncio.Task[None] | None = None
        self._notify_again = False
        self._offset = 0
        self._sql: dict[str, str] = {}
        self._snapshot_conn: asyncpg.Connection | None = None
        self._snapshot_lock = asyncio.Lock()
        # The NOTIFY transaction need not wait for its own fsync: a wake-up lost in a crash
        # costs nothing (subscribers read from their checkpoint). The channel name is built
        # from validated identifiers, so it can be a literal; one simple query, one round trip.
        self._notify_sql = (
            f"SET LOCAL synchronous_commit TO off; SELECT pg_notify('{self.names.channel}', '')"
        )

    def __repr__(self) -> str:
        n = self.names
        return f"PostgresEventStore(schema={n.schema_name!r}, prefix={n.prefix!r})"

    @property
    def batch_append_sql(self) -> str:
        """The statement one group-commit batch runs (see ``_pg_schema.append_statements``)."""
        return append_statements(self.names, self._offset)[0]

    @property
    def channel(self) -> str:
        """The NOTIFY channel that wakes this store's subscribers after commits."""
        return self.names.channel

    # -- lifecycle -----------------------------------------------------------------------

    def server_settings(self) -> dict[str, str]:
        """Session settings every connection of this store runs with."""
        return {
            "application_name": "obelisk",
            "statement_timeout": str(int(self.statement_timeout * 1000)),
            "lock_timeout": str(int(self.lock_timeout * 1000)),
        }

    async def connect(self, **settings: str) -> asyncpg.Connection:
        """A new connection with this store's settings (and ``settings``), outside the pool."""
        try:
            conn = await asyncpg.connect(
                self.dsn,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={**self.server_settings(), **settings},
            )
            await _init_connection(conn)
        except Exception as exc:
            raise translate(exc, "connecting") from exc
        return conn

    async def open(self) -> None:
        async with self._opening:
            if self._closed:
                raise StoreClosed(f"{self!r} is closed; create a new store to reopen it")
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self.pool_min_size,
                    max_size=self.pool_max_size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    server_settings=self.server_settings(),
                    init=_init_connection,
                    reset=_keep_session,
                )
            except Exception as exc:
                raise translate(exc, "connecting") from exc
            try:
                async with pool.acquire() as conn:
                    self._offset = await ensure_schema(conn, self.names, self.codec.name)
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, Exception) and not isinstance(exc, ObeliskError):
                    raise translate(exc, "creating or checking the schema") from exc
                raise
            self._prepare_sql()
            self._pool = pool
            # Readers keep what the writer does not, less one for notifies and imports.
            keep = max(self.pool_max_size - self.max_in_flight - 1, 0)
            self._readers = ConnectionShelf(pool, keep)
            self._loader = StreamLoader(self._fetch_stream, self._fetch_streams)
            self._writer = PostgresWriter(
                pool,
                self.names,
                max_in_flight=self.max_in_flight,
                max_batch=self.max_batch,
                offset=self._offset,
                on_commit=self._committed,
            )

    async def close(self) -> None:
        self._closed = True
        self._notify_local()  # subscriptions notice the closed store at once
        writer, pool = self._writer, self._pool
        if writer is not None:
            writer.close()
            await writer.drain()
            await writer.release_connections()
        if self._readers is not None:
            await self._readers.release_all()
            self._readers = None
        if self._notify_task is not None:
            await asyncio.gather(self._notify_task, return_exceptions=True)
        snapshots, self._snapshot_conn = self._snapshot_conn, None
        if snapshots is not None:
            async with self._snapshot_lock:
                await snapshots.close()
        self._writer = self._pool = None
        if pool is not None:
            await pool.close()

    def terminate(self) -> None:
        self._closed = True
        writer, pool = self._writer, self._pool
        self._writer = self._pool = self._readers = None
        if writer is not None:
            writer.terminate()
        if self._notify_task is not None:
            self._notify_task.cancel()
        snapshots, self._snapshot_conn = self._snapshot_conn, None
        if snapshots is not None:
            snapshots.terminate()
        if pool is not None:
            pool.terminate()

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreClosed(f"{self!r} is not open (use `async with store:` or `open()`)")
        return self._pool

    # -- notifying subscribers -----------------------------------------------------------

    def _committed(self) -> None:
        # NOTIFY from the append transaction itself would make every commit take the
        # database-wide notify lock; one NOTIFY after the fact never does. Commits in the
        # same ``notify_interval`` share one NOTIFY: a sequential writer would otherwise pay
        # a second round trip per append (measured: as much as the append itself), and a
        # subscriber only needs to know that something committed, not how often.
        self._notify_local()
        if self._notify_task is None or self._notify_task.done():
            self._notify_task = asyncio.get_running_loop().create_task(self._send_notify())
        else:
            self._notify_again = True

    async def _send_notify(self) -> None:
        while True:
            self._notify_again = False
            pool = self._pool
            if pool is None:
                return
            try:
                await pool.execute(self._notify_sql)
            except Exception as exc:  # subscribers still poll: log, never fail an append
                _log.warning("NOTIFY after commit failed: %s", exc)
            if self._closed:
                return
            await asyncio.sleep(self.notify_interval)
            if not self._notify_again:
                return

    def _wake_channel(self, wake: Callable[[], None]) -> WakeChannel:
        return _Listener(self, wake)

    # -- writing -------------------------------------------------------------------------

    def append_many(self, requests: Sequence[AppendRequest]) -> Awaitable[list[AppendResult]]:
        if self._writer is None:
            raise StoreClosed(f"{self!r} is not open")
        parts = prepare_appends(requests, self.codec)
        count = sum(len(part.events) for part in parts)
        if count > MAX_EVENTS_PER_TRANSACTION:
            raise ValidationError(
                f"an append holds at most {MAX_EVENTS_PER_TRANSACTION} events on PostgreSQL "
                f"(got {count}); split it, or use import_events for bulk loads"
            )
        return self._writer.append(parts)

    def when_settled(self, append: Awaitable[object], callback: Callable[[], None]) -> bool:
        writer = self._writer
        return writer is not None and writer.when_settled(append, callback)

    async def import_events(
        self,
        requests: Iterable[AppendRequest] | AsyncIterable[AppendRequest],
        *,
        chunk_events: int = MAX_EVENTS_PER_TRANSACTION,
    ) -> ImportResult:
        """Bulk-load appends with COPY, in order, one transaction per chunk of events.

        Expected versions are checked as for ``append`` (against the heads earlier
        requests of the import left). Raises ImportStopped, which carries what earlier
        chunks committed, when a check or the server fails; the failing chunk is rolled
        back whole.
        """
        pool = self._live_pool()
        try:
            async with pool.acquire() as conn:
                result = await import_appends(
                    conn, self.names, self._offset, self.codec, requests,
                    chunk_events=chunk_events,
                )  # fmt: skip
        except ImportStopped as exc:
            if exc.committed.events:
                self._committed()
            raise
        if result.events:
            self._committed()
        return result

    # -- reading -------------------------------------------------------------------------

    def _prepare_sql(self) -> None:
        n = self.names
        envelope = (
            f"SELECT position, stream_id, version, event_id, {_TYPE_KEY}, data, recorded_at, "
            f"correlation_id, causation_id, trace_context, stream_type FROM {n.events} "
        )
        # Everything below the oldest transaction still running is final: nothing can
        # commit there any more (see _pg_schema for why this makes reads gap-free).
        bound = (
            f"((pg_snapshot_xmin(pg_current_snapshot())::text::bigint + {self._offset}) "
            f"<< {INDEX_BITS})"
        )
        self._sql = {
            "stream": envelope + "WHERE stream_id = $1 AND version >= $2 AND version <= $3 "
            "ORDER BY version LIMIT $4",
            "stream_payloads": f"SELECT {_TYPE_KEY}, data FROM {n.events} "
            "WHERE stream_id = $1 AND version >= $2 AND version <= $3 ORDER BY version",
            "streams_payloads": f"SELECT stream_id, {_TYPE_KEY}, data FROM {n.events} "
            "WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, version",
            "stream_slow": f"SELECT position, version, event_type, schema_version, data "
            f"FROM {n.events} WHERE stream_id = $1 AND version >= $2 AND version <= $3 "
            "ORDER BY version",
            "all": envelope + f"WHERE position > $1 AND position < {bound} "
            "ORDER BY position LIMIT $2",
            "all_types": envelope + f"WHERE position > $1 AND position < {bound} "
            "AND event_type = ANY($3::text[]) ORDER BY position LIMIT $2",
            "last": f"SELECT coalesce(max(position), 0) FROM {n.events} WHERE position < {bound}",
            "version": f"SELECT coalesce(max(version), 0) FROM {n.events} WHERE stream_id = $1",
            "positions_of": (
                f"SELECT max(position) FROM {n.events} WHERE event_id = ANY($1::uuid[])"
            ),
            # Walks the (stream_id, version) index: a tool query, not for hot paths.
            "streams": f"SELECT e.stream_id, (SELECT f.stream_type FROM {n.events} f "
            "WHERE f.stream_id = e.stream_id AND f.version = 1), max(e.version) "
            f"FROM {n.events} e WHERE e.stream_id > $1 GROUP BY e.stream_id "
            "ORDER BY e.stream_id LIMIT $2",
            "snapshot": "SELECT stream_id, version, aggregate_type, schema_version, state, "
            f"taken_at FROM {n.snapshots} WHERE stream_id = $1",
            # A full scan: for `obelisk inspect`, never on a hot path.
            "sizes": "SELECT e.stream_id, (SELECT f.stream_type FROM "
            f"{n.events} f WHERE f.stream_id = e.stream_id AND f.version = 1), count(*), "
            f"sum(octet_length(e.data))::bigint, s.version FROM {n.events} e "
            f"LEFT JOIN {n.snapshots} s ON s.stream_id = e.stream_id "
            "GROUP BY e.stream_id, s.version ORDER BY count(*) DESC, e.stream_id LIMIT $1",
            # A snapshot replaces the stored one unless that one is newer (two processes
            # may snapshot one stream at once; the later version is the more useful).
            "save_snapshots": f"INSERT INTO {n.snapshots} AS s (stream_id, version, "
            "aggregate_type, schema_version, state, taken_at) SELECT * FROM unnest("
            "$1::text[], $2::bigint[], $3::text[], $4::integer[], $5::bytea[], "
            "$6::float8[]) ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, "
            "aggregate_type = excluded.aggregate_type, "
            "schema_version = excluded.schema_version, state = excluded.state, "
            "taken_at = excluded.taken_at WHERE excluded.version >= s.version",
            # A load's one round trip: the events from the snapshot's version on, the
            # snapshot's columns on the row of its own version (the first one).
            "from_snapshot": "SELECT e.k, e.data, s.version, s.aggregate_type, "
            f"s.schema_version, s.state, s.taken_at FROM (SELECT version, {_TYPE_KEY} AS k, "
            f"data FROM {n.events} WHERE stream_id = $1 AND version >= coalesce("
            f"(SELECT version FROM {n.snapshots} WHERE stream_id = $1), 1)) e "
            f"LEFT JOIN {n.snapshots} s ON s.stream_id = $1 AND s.version = e.version "
            "ORDER BY e.version",
            "delete_snapshot": f"DELETE FROM {n.snapshots} WHERE stream_id = $1 AND version = $2",
        }

    async def _fetch(self, key: str, *args: Any) -> list[Any]:
        shelf = self._readers
        if shelf is None:
            raise StoreClosed(f"{self!r} is not open (use `async with store:` or `open()`)")
        try:
            conn = await shelf.take()
        except Exception as exc:
            raise translate(exc, "connecting") from exc
        try:
            return await conn.fetch(self._sql[key], *args)
        except asyncpg.exceptions.DataError as exc:
            raise ValidationError(f"PostgreSQL refused a read argument: {exc}") from exc
        except Exception as exc:
            raise translate(exc, "reading") from exc
        finally:
            await shelf.give_back(conn)

    async def _fetch_stream(self, stream_id: str) -> list[Any]:
        return await self._fetch("stream_payloads", stream_id, 1, _upper(None))

    async def _fetch_streams(self, stream_ids: list[str]) -> list[Any]:
        return await self._fetch("streams_payloads", stream_ids)

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        check_versions(from_version, to_version)
        check_limit(limit)
        rows = await self._fetch(
            "stream", _valid(stream_id), from_version, _upper(to_version), limit
        )
        return decode_envelopes(self.codec, rows)

    async def read_stream_events(
        self, stream_id: str, *, from_version: int = 1, to_version: int | None = None
    ) -> list[Event]:
        check_versions(from_version, to_version)
        from_version = max(from_version, 1)
        upper = _upper(to_version)
        if from_version == 1 and to_version is None and self._loader is not None:
            # Loading a whole aggregate: concurrent loads share one query.
            rows: Sequence[Any] = await self._loader.load(_valid(stream_id))
        else:
            rows = await self._fetch("stream_payloads", _valid(stream_id), from_version, upper)
        out = decode_payloads(self.codec, rows)
        if len(out) < len(rows):
            # From the first uncommon row on: read again with what decode() needs to
            # upcast, or to name the stream, version and position of a bad row.
            slow = await self._fetch("stream_slow", stream_id, from_version + len(out), upper)
            decode_rest(self.codec, stream_id, slow, out)
        return out

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Iterable[str] | None = None,
        keep_undecodable: bool = False,
    ) -> list[StoredEvent]:
        check_limit(limit)
        check_position(after)
        if types is None:
            rows = await self._fetch("all", after, limit)
        else:
            rows = await self._fetch("all_types", after, limit, check_types(types))
        return decode_envelopes(self.codec, rows, keep_undecodable)

    async def last_position_of(self, event_ids: Sequence[UUID]) -> int | None:
        ids = event_id_bytes(event_ids)
        if not ids:
            return None
        rows = await self._fetch("positions_of", ids)
        return None if rows[0][0] is None else int(rows[0][0])

    async def last_position(self) -> int:
        rows = await self._fetch("last")
        return int(rows[0][0])

    async def stream_version(self, stream_id: str) -> int:
        rows = await self._fetch("version", _valid(stream_id))
        return int(rows[0][0]) if rows else 0

    async def list_streams(self, *, after: str | None = None, limit: int = 100) -> list[StreamInfo]:
        check_limit(limit)
        after = check_stream_after(after)
        rows = await self._fetch("streams", after or "", limit)
        # Versions count from 1 with no holes, so a stream's version is its event count.
        return [StreamInfo(sid, stype, version, version) for sid, stype, version in rows]

    # -- snapshots -----------------------------------------------------------------------

    async def save_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        validate_snapshots(snapshots)
        if not snapshots:
            return
        # One stream once per statement (ON CONFLICT cannot touch a row twice): the newest.
        newest: dict[str, Snapshot] = {}
        for snapshot in snapshots:
            held = newest.get(snapshot.stream_id)
            if held is None or held.version <= snapshot.version:
                newest[snapshot.stream_id] = snapshot
        rows = list(newest.values())
        try:
            async with self._snapshot_lock:
                conn = await self._snapshot_connection()
                await conn.execute(
                    self._sql["save_snapshots"],
                    [s.stream_id for s in rows],
                    [s.version for s in rows],
                    [s.aggregate_type for s in rows],
                    [s.schema_version for s in rows],
                    [s.state for s in rows],
                    [s.taken_at for s in rows],
                )
        except asyncpg.exceptions.DataError as exc:
            raise ValidationError(f"PostgreSQL refused a snapshot: {exc}") from exc
        except ObeliskError:
            raise
        except Exception as exc:
            raise translate(exc, "saving snapshots") from exc

    async def _snapshot_connection(self) -> asyncpg.Connection:
        """The connection snapshots are written on: one statement, one round trip each.

        Its own, outside the pool, because its session commits without waiting for the
        fsync (``synchronous_commit=off``): a snapshot is a cache of what the events hold,
        and that setting must never reach a connection that appends.
        """
        self._live_pool()  # refuse on a closed store
        conn = self._snapshot_conn
        if conn is None or conn.is_closed():
            conn = self._snapshot_conn = await self.connect(synchronous_commit="off")
        return conn

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        rows = await self._fetch("snapshot", _valid(stream_id))
        return Snapshot(*rows[0]) if rows else None

    async def _snapshot_rows(self, stream_id: str) -> Sequence[Sequence[Any]] | None:
        return await self._fetch("from_snapshot", _valid(stream_id))

    async def delete_snapshot(self, stream_id: str, version: int) -> None:
        check_int64("version", version)
        try:
            async with self._snapshot_lock:
                conn = await self._snapshot_connection()
                await conn.execute(self._sql["delete_snapshot"], _valid(stream_id), version)
        except ObeliskError:
            raise
        except Exception as exc:
            raise translate(exc, "deleting a snapshot") from exc

    async def stream_sizes(self, *, limit: int = 20) -> list[StreamSize]:
        check_limit(limit)
        return [StreamSize(*row) for row in await self._fetch("sizes", limit)]


class _Listener:
    """A subscription's LISTEN connection: NOTIFY after any commit wakes it.

    Its own connection (not the pool's): a dropped connection is noticed by asyncpg's
    termination callback, which wakes the subscription so that it reconnects at once;
    until it has, the subscription polls.
    """

    def __init__(self, store: PostgresEventStore, wake: Callable[[], None]) -> None:
        self._store = store
        self._wake = wake
        self._conn: asyncpg.Connection | None = None
        self.connects = 0

    async def ensure(self) -> None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return
        self._conn = None
        conn = await self._store.connect()
        try:
            await conn.add_listener(self._store.channel, self._notified)
        except Exception as exc:
            conn.terminate()
            raise translate(exc, "subscribing to commit notifications") from exc
        conn.add_termination_listener(self._lost)
        self._conn = conn
        self.connects += 1

    def _notified(self, *_: object) -> None:
        self._wake()

    def _lost(self, *_: object) -> None:
        self._wake()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the close completes.
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception:
                conn.terminate()


def _upper(to_version: int | None) -> int:
    return to_version if to_version is not None else (1 << 62)
