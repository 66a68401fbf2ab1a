"""PostgreSQL schema, its migrations and the append statements.

Positions: ``((transaction id + offset) << 16) + index within the transaction``.

Every event row carries the id of the transaction that wrote it, folded into its position,
and readers only return positions below the oldest transaction still in flight
(``pg_snapshot_xmin`` of their own snapshot). A transaction that is still running when a
reader looks has an id at or above that bound, so every event it commits later sorts after
everything the reader has already returned: no reader ever skips an event that commits
late, and no writer waits for another writer's commit. Positions are unique and increase in
read order; inside one transaction they are contiguous, between transactions they jump.

The 16 low bits cap one transaction at 65,536 events (group commit and imports split their
batches below it) and leave 47 bits of transaction ids: at 100,000 write transactions a
second, 44 years. ``offset`` is 0 unless the database was restored into a cluster whose
transaction counter is lower than the one that wrote it (dump and restore): opening it then
raises the offset once, so new positions still sort after every stored one.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from obelisk.errors import StoreError
from obelisk.store.identifiers import check_identifier

__all__ = [
    "INDEX_BITS",
    "AnyConnection",
    "MAX_EVENTS_PER_TRANSACTION",
    "SCHEMA_VERSION",
    "Names",
    "AppendStatements",
    "append_statements",
    "ensure_schema",
]

AnyConnection = asyncpg.Connection | PoolConnectionProxy
"""A plain connection or one borrowed from a pool: both run queries the same way."""

INDEX_BITS: Final = 16
MAX_EVENTS_PER_TRANSACTION: Final = 1 << INDEX_BITS


class Names:
    """Quoted, validated SQL names of one store's objects.

    Names follow obelisk's one identifier rule (:mod:`obelisk.store.identifiers`), and they
    are quoted as well, so configuration can never inject SQL.
    """

    def __init__(self, schema: str, prefix: str) -> None:
        schema = check_identifier("schema", schema)
        # The longest names built from them: the unique index (prefix + 21 bytes) and the
        # NOTIFY channel (schema.prefix + events), which PostgreSQL caps at 63 bytes too.
        prefix = check_identifier(
            "table prefix",
            prefix,
            builds=(f"{prefix}events_stream_version", f"{schema}.{prefix}events"),
        )
        self.schema_name = schema
        self.prefix = prefix
        self.schema = f'"{schema}"'
        self.events = self._name("events")
        self.meta = self._name("meta")
        self.snapshots = self._name("snapshots")
        # NOTIFY channel: one per store, so two stores in one database wake only their own.
        self.channel = f"{schema}.{prefix}events"

    def _name(self, table: str) -> str:
        return f'{self.schema}."{self.prefix}{table}"'

    def index(self, name: str) -> str:
        """An unqualified, quoted index or constraint name."""
        return f'"{self.prefix}{name}"'


def _migration_1(n: Names) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS {n.meta} (
            key text PRIMARY KEY,
            value text NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS {n.events} (
            position bigint PRIMARY KEY,
            stream_id text COLLATE "C" NOT NULL,
            version bigint NOT NULL,
            event_id uuid NOT NULL,
            event_type text NOT NULL,
            schema_version integer NOT NULL,
            data bytea NOT NULL,
            recorded_at double precision NOT NULL,
            correlation_id text,
            causation_id text,
            stream_type text,
            -- Versions are guarded by this index alone: a stream's head is the last entry
            -- of its run, and two writers of the same version cannot both commit.
            CONSTRAINT {n.index("events_stream_version")} UNIQUE (stream_id, version),
            CONSTRAINT {n.index("events_event_id")} UNIQUE (event_id)
        )""",
    )


def _migration_2(n: Names) -> tuple[str, ...]:
    return (
        # One snapshot per stream, the newest: loads read it, then the events after it.
        f"""CREATE TABLE IF NOT EXISTS {n.snapshots} (
            stream_id text COLLATE "C" PRIMARY KEY,
            version bigint NOT NULL,
            aggregate_type text NOT NULL,
            schema_version integer NOT NULL,
            state bytea NOT NULL,
            taken_at double precision NOT NULL
        )""",
    )


def _migration_3(n: Names) -> tuple[str, ...]:
    # The W3C traceparent of the command that wrote the event (NULL: not traced).
    return (f"ALTER TABLE {n.events} ADD COLUMN IF NOT EXISTS trace_context text",)


MIGRATIONS: Final = ((1, _migration_1), (2, _migration_2), (3, _migration_3))
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]


class AppendStatements(NamedTuple):
    """The statements that append (see :func:`append_statements`)."""

    batch: str
    flat: str
    flat_follow: str
    solo: str
    single: str
    follow: str


def append_statements(n: Names, offset: int) -> AppendStatements:
    """The statements that append: one group-commit batch each, one round trip.

    Both run as single statements (their own transaction, committed when they end). The
    head of a stream is read from the (stream_id, version) index; if another writer commits
    the same version between that read and the insert, the unique index refuses the insert
    and the whole statement fails, so a version check can never pass on a stale head.

    ``batch`` takes arrays, one element per part (``$1``-``$6``) or per event (``$7``-``$11``,
    in part order; a NULL array stands for all-default: no type, job = part, part = event,
    no correlation, schema version 1), and ``$12`` per part (trace context). Each stream
    appears at most once per call (the writer sees to it). A job (``$4``) is written only
    if all of its parts pass, so a failed check fails only its own append. It returns, per
    part: passed, the head it was checked against, and the position of its first event.

    ``flat`` is ``batch`` for the commonest batch, in which every append is one event to one
    stream: one row per append, so no per-event join, no window over jobs or events, and a
    position index that is simply the append's ordinal (positions need only increase,
    not be contiguous). Measured at about a fifth less time per batch than ``batch``. Its
    arrays: stream, expected, type, correlation, causation, event id, event type, schema
    version, data, trace context (the same NULL conventions); it returns what ``batch``
    does. The single-append statements take the trace context as their last parameter.

    ``flat_follow`` is ``flat`` when every expected version is known to exist (see
    ``follow`` below): no head is read, each row goes in at its expected version + 1, and
    the unique index refuses the rows another writer got to first (``ON CONFLICT DO
    NOTHING``; each append is one stream, so each fails or passes alone). It returns the
    position of each row written; a position's low bits are its append's ordinal.

    ``solo`` is the same for the commonest batch, one append to one stream: a plan small
    enough to cost about what a bare INSERT does. It returns the written positions, or no
    row when the expected version did not match.

    ``single`` is ``solo`` for one event, its values passed as scalars: the most common
    append of all (a command that records one event) then skips building, sending and
    unnesting four one-element arrays.

    ``follow`` is ``single`` when version ``$9`` (the expected version) is known to exist:
    NO_STREAM (0) always, or a version the writer has seen committed (streams never
    shrink). Version ``$9 + 1`` is then inserted without reading a head, and the unique
    ``(stream_id, version)`` index itself says whether another writer got there first (no
    row returned). Creating an aggregate, or updating one this process just wrote, then
    costs what a bare INSERT does.
    """
    position = f"((pg_current_xact_id()::text::bigint + {offset}) << {INDEX_BITS})"
    head = (
        f"coalesce((SELECT h.version FROM {n.events} h WHERE h.stream_id = {{stream}} "
        "ORDER BY h.version DESC LIMIT 1), 0)"
    )
    columns = (
        "position, stream_id, version, event_id, event_type, schema_version, data, "
        "recorded_at, correlation_id, causation_id, stream_type, trace_context"
    )
    batch = f"""
WITH parts AS (
    SELECT u.part, u.s, u.e, coalesce(u.j, u.part) AS j, u.t, u.c, u.k, u.r,
           {head.format(stream="u.s")} AS actual
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::text[], $6::text[],
                $12::text[])
         WITH ORDINALITY AS u(s, e, t, j, c, k, r, part)
), judged AS (
    SELECT p.*, bool_and(p.e = -1 OR p.e = p.actual) OVER (PARTITION BY p.j) AS ok
    FROM parts p
), rows AS (
    SELECT d.part, d.s, d.actual, d.t, d.c, d.k, d.r, ev.id, ev.et, coalesce(ev.sv, 1) AS sv,
           ev.data,
           row_number() OVER (ORDER BY ev.ord) - 1 AS idx,
           row_number() OVER (PARTITION BY d.part ORDER BY ev.ord) AS step
    FROM unnest($7::integer[], $8::uuid[], $9::text[], $10::integer[], $11::bytea[])
         WITH ORDINALITY AS ev(part, id, et, sv, data, ord)
    JOIN judged d ON d.part = coalesce(ev.part, ev.ord)
    WHERE d.ok
), base AS (
    SELECT {position} AS b
), spans AS (
    SELECT r.part, min(r.idx) AS first_idx FROM rows r GROUP BY r.part
), written AS (
    INSERT INTO {n.events} ({columns})
    SELECT base.b + r.idx, r.s, r.actual + r.step, r.id, r.et, r.sv, r.data,
           extract(epoch FROM statement_timestamp()), r.c, r.k,
           CASE WHEN r.actual + r.step = 1 THEN r.t END, r.r
    FROM rows r, base
    RETURNING 1
)
SELECT d.ok, d.actual, base.b + spans.first_idx AS first_position
FROM judged d CROSS JOIN base LEFT JOIN spans ON spans.part = d.part
ORDER BY d.part"""
    flat = f"""
WITH parts AS (
    SELECT u.s, u.e, u.t, u.c, u.k, u.id, u.et, coalesce(u.sv, 1) AS sv, u.data, u.r, u.ord,
           {head.format(stream="u.s")} AS actual
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                $7::text[], $8::integer[], $9::bytea[], $10::text[])
         WITH ORDINALITY AS u(s, e, t, c, k, id, et, sv, data, r, ord)
), judged AS (
    SELECT p.*, (p.e = -1 OR p.e = p.actual) AS ok FROM parts p
), base AS (
    SELECT {position} AS b
), written AS (
    INSERT INTO {n.events} ({columns})
    SELECT base.b + d.ord - 1, d.s, d.actual + 1, d.id, d.et, d.sv, d.data,
           extract(epoch FROM statement_timestamp()), d.c, d.k,
           CASE WHEN d.actual = 0 THEN d.t END, d.r
    FROM judged d, base
    WHERE d.ok
    RETURNING 1
)
SELECT d.ok, d.actual, base.b + d.ord - 1 AS first_position
FROM judged d CROSS JOIN base
ORDER BY d.ord"""
    flat_follow = f"""
INSERT INTO {n.events} ({columns})
SELECT base.b + u.ord - 1, u.s, u.e + 1, u.id, u.et, coalesce(u.sv, 1), u.data,
       extract(epoch FROM statement_timestamp()), u.c, u.k, CASE WHEN u.e = 0 THEN u.t END,
       u.r
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::uuid[],
            $7::text[], $8::integer[], $9::bytea[], $10::text[])
     WITH ORDINALITY AS u(s, e, t, c, k, id, et, sv, data, r, ord),
     (SELECT {position} AS b) base
ON CONFLICT (stream_id, version) DO NOTHING
RETURNING position"""
    solo = f"""
INSERT INTO {n.events} ({columns})
SELECT {position} + ev.ord - 1, $1, h.v + ev.ord, ev.id, ev.et, ev.sv, ev.data,
       extract(epoch FROM statement_timestamp()), $4, $5,
       CASE WHEN h.v + ev.ord = 1 THEN $3 END, $10
FROM (SELECT {head.format(stream="$1::text")} AS v) h,
     unnest($6::uuid[], $7::text[], $8::integer[], $9::bytea[])
         WITH ORDINALITY AS ev(id, et, sv, data, ord)
WHERE $2::bigint = -1 OR $2::bigint = h.v
RETURNING position, version"""
    single = f"""
INSERT INTO {n.events} ({columns})
SELECT {position}, $1, h.v + 1, $6, $7, $8, $9,
       extract(epoch FROM statement_timestamp()), $4, $5, CASE WHEN h.v = 0 THEN $3 END, $10
FROM (SELECT {head.format(stream="$1::text")} AS v) h
WHERE $2::bigint = -1 OR $2::bigint = h.v
RETURNING position, version"""
    follow = f"""
INSERT INTO {n.events} ({columns})
VALUES ({position}, $1, $9::bigint + 1, $2, $3, $4, $5, extract(epoch FROM statement_timestamp()),
        $6, $7, CASE WHEN $9::bigint = 0 THEN $8 END, $10)
ON CONFLICT (stream_id, version) DO NOTHING
RETURNING position"""
    return AppendStatements(batch, flat, flat_follow, solo, single, follow)


async def ensure_schema(conn: AnyConnection, names: Names, codec_name: str) -> int:
    """Create or migrate the schema; return the position offset (see the module notes).

    Runs in one transaction under an advisory lock, so processes opening the same store at
    once migrate it exactly once.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"obelisk:{names.channel}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {names.schema}")
        current = await _current_version(conn, names)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"schema version {current} of {names.schema_name} is newer than this obelisk "
                f"({SCHEMA_VERSION}); upgrade obelisk to open it"
            )
        for version, statements in MIGRATIONS:
            if version > current:
                for statement in statements(names):
                    await conn.execute(statement)
        await _put(conn, names, "schema_version", str(SCHEMA_VERSION))
        stored_codec = await _get(conn, names, "codec")
        if stored_codec is None:
            await _put(conn, names, "codec", codec_name)
        elif stored_codec != codec_name:
            raise StoreError(
                f"this store was created with the {stored_codec!r} codec; "
                f"open it with that codec, not {codec_name!r}"
            )
        return await _position_offset(conn, names)


async def _position_offset(conn: AnyConnection, names: Names) -> int:
    stored = await _get(conn, names, "xid_offset")
    offset = int(stored) if stored is not None else 0
    highest = await conn.fetchval(f"SELECT max(position) FROM {names.events}")
    next_xid = await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    if highest is not None and (highest >> INDEX_BITS) >= next_xid + offset:
        # Restored into a cluster with a lower transaction counter: move new positions
        # past every stored one, once, for good.
        offset = (highest >> INDEX_BITS) - next_xid + 1
        await _put(conn, names, "xid_offset", str(offset))
    return offset


async def _current_version(conn: AnyConnection, names: Names) -> int:
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{names.schema}.\"{names.prefix}meta\""
    )
    if not exists:
        return 0
    value = await _get(conn, names, "schema_version")
    return int(value) if value is not None else 0


async def _get(conn: AnyConnection, names: Names, key: str) -> str | None:
    value = await conn.fetchval(f"SELECT value FROM {names.meta} WHERE key = $1", key)
    return None if value is None else str(value)


async def _put(conn: AnyConnection, names: Names, key: str, value: str) -> None:
    await conn.execute(
        f"INSERT INTO {names.meta} (key, value) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        value,
    )
