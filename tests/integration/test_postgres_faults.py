"""PostgresEventStore under real faults: a server restart, a killed LISTEN connection,
stuck locks, slow statements, hostile names and an unreachable server.

What every case checks: a failed call raises a clear obelisk error (StoreUnavailable for a
lost or slow server, ValidationError for bad input), never a raw asyncpg one; no
acknowledged append is lost; and the store object recovers by itself once the server is
back. Tests that restart the server need the session's own one and skip otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreError, StoreUnavailable, ValidationError
from obelisk.servers.postgres import ThrowawayPostgres
from obelisk.store import NO_STREAM, AppendRequest, AppendResult
from obelisk.store.postgres import PostgresEventStore
from obelisk.store.records import Snapshot

from .test_postgres_subscriptions import backend_query, listener_of, listening
from .test_subscriptions_local import SubscriptionReader, assert_exactly_once_in_order, until

WAIT = 10.0
RECOVERY = 60.0  # bound on waiting for the store to work again after a restart


class PgFaultNoted(Event):
    event_type = "test_postgres_faults.Noted"
    n: int


def _note(n: int) -> list[Event]:
    return [PgFaultNoted(n=n)]


def _needs_own_server(server: ThrowawayPostgres | None) -> ThrowawayPostgres:
    if server is None:
        pytest.skip("restarts the server: needs the session's own, not $OBELISK_TEST_POSTGRES_DSN")
    return server


@pytest.fixture
async def sql(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for looking at the server and holding locks."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


# -- the server restarts --------------------------------------------------------------------


class _StormWriter:
    """Appends to its own stream with exact expected versions, recording every outcome.

    After a failed append its outcome is unknown (it may have committed), so the writer
    reads the stream's version again before going on.
    """

    def __init__(self, store: PostgresEventStore, index: int) -> None:
        self.store = store
        self.stream = f"storm-{index}"
        self.acked: list[tuple[int, AppendResult]] = []
        self.errors: list[BaseException] = []
        self.acked_after_restart = 0
        self.restarted = False

    async def run(self, stop: asyncio.Event) -> None:
        version = NO_STREAM
        n = 0
        while not stop.is_set():
            n += 1
            try:
                result = await self.store.append(self.stream, _note(n), expected_version=version)
            except Exception as exc:
                self.errors.append(exc)
                version = await self._current_version(stop, version)
                continue
            self.acked.append((n, result))
            version = result.version
            if self.restarted:
                self.acked_after_restart += 1

    async def _current_version(self, stop: asyncio.Event, fallback: int) -> int:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            try:
                return await self.store.stream_version(self.stream)
            except Exception as exc:
                self.errors.append(exc)
        return fallback


async def test_a_restart_during_an_append_storm_loses_no_acknowledged_append(
    postgres_server: ThrowawayPostgres | None,
    postgres_dsn: str,
    pg_schema: str,
    loop_errors: list[object],
) -> None:
    server = _needs_own_server(postgres_server)
    store = PostgresEventStore(
        postgres_dsn,
        schema=pg_schema,
        pool_min_size=2,
        pool_max_size=6,
        max_in_flight=3,
        connect_timeout=2,
        command_timeout=20,
    )
    async with store:
        writers = [_StormWriter(store, i) for i in range(32)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        try:
            # Restart in the middle of the storm: once every writer has committed a few.
            await asyncio.wait_for(until(lambda: all(len(w.acked) >= 3 for w in writers)), 30)
            await asyncio.to_thread(server.restart)
            for w in writers:
                w.restarted = True
            # The same store object works again by itself: no reopen, just time.
            await asyncio.wait_for(
                until(lambda: all(w.acked_after_restart >= 3 for w in writers)), RECOVERY
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), RECOVERY)

        errors = [e for w in writers for e in w.errors]
        assert errors, "no append failed: the restart did not hit the storm"
        not_clear = [e for e in errors if not isinstance(e, StoreUnavailable)]
        assert not not_clear, f"expected StoreUnavailable only, got {not_clear[:5]}"

        for w in writers:
            stored = await store.read_stream(w.stream)
            # No hole, and only events the writer sent, in the order it sent them.
            assert [e.version for e in stored] == list(range(1, len(stored) + 1))
            numbers = [e.event.n for e in stored if isinstance(e.event, PgFaultNoted)]
            assert numbers == sorted(set(numbers)) and len(numbers) == len(stored)
            by_version = {e.version: e for e in stored}
            for n, result in w.acked:
                event = by_version.get(result.version)
                assert event is not None, f"acknowledged {result} is lost"
                assert (event.position, event.event) == (result.first_position, PgFaultNoted(n=n))
        everything = await store.read_all(limit=100_000)
        positions = [e.position for e in everything]
        assert positions == sorted(set(positions))
        assert len(everything) == sum([len(await store.read_stream(w.stream)) for w in writers])


# -- the LISTEN connection is killed -------------------------------------------------------


async def test_a_killed_listen_connection_costs_no_event_and_repeats_none(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with (
        PostgresEventStore(postgres_dsn, schema=pg_schema, pool_min_size=1) as writer,
        PostgresEventStore(postgres_dsn, schema=pg_schema, pool_min_size=1) as follower,
    ):
        for n in range(10):  # before
            await writer.append(f"listen-{n % 3}", _note(n))
        sub = follower.subscribe(page_size=4, poll_interval=0.5)
        reader = SubscriptionReader(sub)
        try:
            await reader.wait_for(10)
            pid = await listening(sub)
            listener = listener_of(sub)
            query = await backend_query(postgres_dsn, pid)
            assert query is not None and query.upper().startswith("LISTEN"), query

            async def during() -> None:
                for n in range(10, 30):
                    await writer.append(f"listen-{n % 3}", _note(n))

            appending = asyncio.create_task(during())
            await asyncio.sleep(0)  # let the first appends go out
            killed = await sql.fetchval("SELECT pg_terminate_backend($1)", pid)
            assert killed is True
            await appending

            # It listens again on a new connection, by itself.
            await asyncio.wait_for(until(lambda: listener.connects >= 2), WAIT)
            assert listener._conn is not None
            new_pid = listener._conn.get_server_pid()
            assert new_pid != pid
            query = await backend_query(postgres_dsn, new_pid)
            assert query is not None and query.upper().startswith("LISTEN"), query

            for n in range(30, 40):  # after
                await writer.append(f"listen-{n % 3}", _note(n))
            received = await reader.wait_for(40)
            await asyncio.sleep(0.2)  # room for a (wrong) duplicate to show up
        finally:
            await reader.stop()
        assert_exactly_once_in_order(reader.events, await writer.read_all())
        assert [e.event for e in received] == [PgFaultNoted(n=n) for n in range(40)]


async def test_a_subscription_follows_the_log_across_a_server_restart(
    postgres_server: ThrowawayPostgres | None,
    postgres_dsn: str,
    pg_schema: str,
    loop_errors: list[object],
) -> None:
    server = _needs_own_server(postgres_server)
    async with PostgresEventStore(
        postgres_dsn, schema=pg_schema, pool_min_size=1, connect_timeout=2
    ) as store:
        for n in range(5):
            await store.append("restart-sub", _note(n))
        sub = store.subscribe(poll_interval=0.5)
        reader = SubscriptionReader(sub)
        try:
            await reader.wait_for(5)
            listener = listener_of(sub)
            await asyncio.to_thread(server.restart)

            async def append_when_back(n: int) -> None:
                # The same event id on every try: a try that committed unacknowledged
                # makes the next one a no-op instead of a duplicate.
                event_id = uuid.uuid4()
                while True:
                    try:
                        await store.append(
                            "restart-sub", _note(n), expected_version=n, event_ids=[event_id]
                        )
                        return
                    except StoreUnavailable:
                        await asyncio.sleep(0.1)

            for n in range(5, 10):
                await asyncio.wait_for(append_when_back(n), RECOVERY)
            received = await reader.wait_for(10, within=RECOVERY)
            await asyncio.wait_for(until(lambda: listener.connects >= 2), RECOVERY)
        finally:
            await reader.stop()
        assert_exactly_once_in_order(reader.events, await store.read_all())
        assert [e.event for e in received] == [PgFaultNoted(n=n) for n in range(10)]


# -- statement and lock timeouts -----------------------------------------------------------


async def test_an_append_to_a_locked_stream_fails_alone_and_others_still_commit(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with PostgresEventStore(
        postgres_dsn, schema=pg_schema, lock_timeout=0.2, pool_min_size=1
    ) as store:
        await store.append("locked", _note(1), NO_STREAM)
        async with _holding_next_version(sql, pg_schema, "locked"):
            outcomes = await asyncio.gather(
                store.append("locked", _note(2), expected_version=1),
                *(store.append(f"free-{i}", _note(i), NO_STREAM) for i in range(5)),
                store.append_many(
                    [AppendRequest("free-many-a", _note(7)), AppendRequest("free-many-b", _note(8))]
                ),
                return_exceptions=True,
            )
        locked, *free = outcomes
        assert isinstance(locked, StoreError), repr(locked)
        assert "lock timeout" in str(locked)
        assert not any(isinstance(outcome, BaseException) for outcome in free), free
        # Nothing of the timed-out append was written; the others were.
        assert [e.event for e in await store.read_stream("locked")] == _note(1)
        for i in range(5):
            assert [e.event for e in await store.read_stream(f"free-{i}")] == _note(i)
        assert await store.stream_version("free-many-b") == 1
        # Once the lock is gone the stream takes appends again.
        assert (await store.append("locked", _note(2), expected_version=1)).version == 2


@pytest.mark.parametrize(
    ("lock_timeout", "statement_timeout", "alone"),
    [
        pytest.param(0.2, 30.0, True, id="lock-timeout-alone"),
        pytest.param(0.2, 30.0, False, id="lock-timeout-in-a-batch"),
        pytest.param(0.0, 0.3, True, id="statement-timeout"),
    ],
)
async def test_an_append_that_times_out_on_a_locked_stream_raises_store_unavailable(
    postgres_dsn: str,
    pg_schema: str,
    sql: asyncpg.Connection,
    loop_errors: list[object],
    lock_timeout: float,
    statement_timeout: float,
    alone: bool,
) -> None:
    async with PostgresEventStore(
        postgres_dsn,
        schema=pg_schema,
        pool_min_size=1,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
    ) as store:
        await store.append("locked", _note(1), NO_STREAM)
        async with _holding_next_version(sql, pg_schema, "locked"):
            others = [] if alone else [store.append("free", _note(2))]
            locked, *_ = await asyncio.gather(
                store.append("locked", _note(2), expected_version=1),
                *others,
                return_exceptions=True,
            )
        assert isinstance(locked, StoreUnavailable), repr(locked)
        assert "timeout" in str(locked)
        assert await store.stream_version("locked") == 1


async def test_a_cancelled_lone_append_settles_only_once_the_server_is_done_with_it(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    """A lone append runs in its caller's task; cancelling the caller must not let the
    unit of work behind it go on while the server may still commit the statement."""
    async with PostgresEventStore(postgres_dsn, schema=pg_schema, pool_min_size=1) as store:
        await store.append("held", _note(1), NO_STREAM)  # alone: the next one runs in place
        async with _holding_next_version(sql, pg_schema, "held"):
            append = store.append_many([AppendRequest("held", _note(2), expected_version=1)])

            async def caller() -> list[AppendResult]:
                return await append

            task = asyncio.create_task(caller())
            await asyncio.wait_for(_until_waiting_on_a_lock(sql), WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            settled = asyncio.Event()
            assert store.when_settled(append, settled.set), "settled before the server answered"
            await asyncio.wait_for(settled.wait(), WAIT)
            # Settled means the server has finished with the statement: it no longer waits.
            assert not await _waiting_on_a_lock(sql)
        # The server cancelled it, so nothing of it landed; the stream goes on as before.
        assert [e.event for e in await store.read_stream("held")] == _note(1)
        assert (await store.append("held", _note(2), expected_version=1)).version == 2


async def _until_waiting_on_a_lock(sql: asyncpg.Connection) -> None:
    # Polling: the server has no event to wait on for another backend starting to wait.
    while not await _waiting_on_a_lock(sql):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def _waiting_on_a_lock(sql: asyncpg.Connection) -> bool:
    waiting = await sql.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return bool(waiting)


@contextlib.asynccontextmanager
async def _holding_next_version(
    sql: asyncpg.Connection, schema: str, stream: str
) -> AsyncIterator[None]:
    """Insert the stream's next version in a transaction left open, then roll it back.

    An append of that version waits on the unique (stream_id, version) index for the open
    transaction: the lock that lock_timeout and statement_timeout must cut short.
    """
    transaction = sql.transaction()
    await transaction.start()
    try:
        await sql.execute(
            f'INSERT INTO "{schema}".obelisk_events (position, stream_id, version, event_id, '
            "event_type, schema_version, data, recorded_at) "
            "SELECT (pg_current_xact_id()::text::bigint << 16), $1, "
            f'(SELECT max(version) + 1 FROM "{schema}".obelisk_events WHERE stream_id = $1), '
            "gen_random_uuid(), 'held', 1, ''::bytea, 0",
            stream,
        )
        yield
    finally:
        await transaction.rollback()


async def test_a_read_slower_than_the_statement_timeout_fails_clearly(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with PostgresEventStore(
        postgres_dsn, schema=pg_schema, statement_timeout=0.3, lock_timeout=0, pool_min_size=1
    ) as store:
        await store.append("slow", _note(1))
        pool = store._live_pool()
        assert await pool.fetchval("SHOW statement_timeout") == "300ms"
        with pytest.raises(asyncpg.exceptions.QueryCanceledError, match="statement timeout"):
            await pool.fetchval("SELECT pg_sleep(5)")

        # A read stuck behind another session's lock is slow through the store's own API.
        async with sql.transaction():
            await sql.execute(f'LOCK TABLE "{pg_schema}".obelisk_events IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(StoreUnavailable, match="timeout") as raised:
                await store.read_all()
            assert isinstance(raised.value.__cause__, asyncpg.exceptions.QueryCanceledError)
        # The pool's connection survived the cancelled statement.
        assert [e.event for e in await store.read_all()] == _note(1)


# -- hostile names ------------------------------------------------------------------------

_CLOSED_PORT_DSN = "postgresql://postgres@127.0.0.1:1/postgres"


@pytest.mark.parametrize(
    "schema",
    ['x"; DROP TABLE y; --', "Upper", "a" * 41, "", "a b", "1abc", "naïve", "x\x00"],
)
def test_a_hostile_schema_name_is_refused_before_any_connection(schema: str) -> None:
    with pytest.raises(ValidationError):
        PostgresEventStore(_CLOSED_PORT_DSN, schema=schema)


@pytest.mark.parametrize("prefix", ["a b", "Obelisk_", "a" * 21, "", "_x", 'p"; --', "1p"])
def test_a_hostile_table_prefix_is_refused_before_any_connection(prefix: str) -> None:
    with pytest.raises(ValidationError):
        PostgresEventStore(_CLOSED_PORT_DSN, prefix=prefix)


def test_a_schema_name_reserved_by_postgresql_is_refused_before_any_connection() -> None:
    with pytest.raises(ValidationError):
        PostgresEventStore(_CLOSED_PORT_DSN, schema="pg_evil")


@pytest.fixture
async def weak_dsn(postgres_dsn: str, sql: asyncpg.Connection) -> AsyncIterator[str]:
    """A DSN for a role that may log in but not create schemas (the server trusts it)."""
    role = f"weak_{uuid.uuid4().hex[:12]}"
    await sql.execute(f'CREATE ROLE "{role}" LOGIN')
    await sql.execute(f'REVOKE CREATE ON DATABASE postgres FROM "{role}"')
    try:
        yield postgres_dsn.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    finally:
        await sql.execute(f'DROP ROLE "{role}"')


async def test_opening_without_the_right_to_create_the_schema_raises_a_store_error(
    weak_dsn: str, pg_schema: str, loop_errors: list[object]
) -> None:
    store = PostgresEventStore(weak_dsn, schema=pg_schema, pool_min_size=1)
    with pytest.raises(StoreError, match="permission denied"):
        await store.open()
    assert store._pool is None


_HOSTILE_STREAM_IDS = [
    "o'brien",
    'x"; DROP TABLE obelisk_events; --',
    "'); DELETE FROM obelisk_events; --",
    "semi;colon",
    "$1 %s {0} \\x00",
    "back\\slash",
    "ストリーム-🚀",
    "ß-ǅ-Ω",
]


async def test_stream_ids_with_quotes_semicolons_and_unicode_are_stored_verbatim(
    postgres_dsn: str, pg_schema: str, sql: asyncpg.Connection, loop_errors: list[object]
) -> None:
    async with PostgresEventStore(postgres_dsn, schema=pg_schema, pool_min_size=1) as store:
        for n, stream in enumerate(_HOSTILE_STREAM_IDS):
            await store.append(stream, _note(n), NO_STREAM, stream_type=stream)
        await store.import_events([AppendRequest(_HOSTILE_STREAM_IDS[0], _note(99))])

        for n, stream in enumerate(_HOSTILE_STREAM_IDS):
            events = await store.read_stream(stream)
            assert events[0].stream_id == stream
            assert events[0].event == PgFaultNoted(n=n)
            assert await store.stream_version(stream) == len(events)
            assert await store.read_stream_events(stream) == [e.event for e in events]
        listed = await store.list_streams(limit=100)
        assert sorted(s.stream_id for s in listed) == sorted(_HOSTILE_STREAM_IDS)
        assert all(s.stream_type == s.stream_id for s in listed)
        assert [e.stream_id for e in await store.read_all()] == [
            *_HOSTILE_STREAM_IDS,
            _HOSTILE_STREAM_IDS[0],
        ]
        snapshots = [Snapshot(s, 1, s, 1, s.encode(), 0.0) for s in _HOSTILE_STREAM_IDS]
        await store.save_snapshots(snapshots)
        for snapshot in snapshots:
            assert await store.load_snapshot(snapshot.stream_id) == snapshot
        sizes = await store.stream_sizes(limit=100)
        assert {s.stream_id: s.snapshot_version for s in sizes} == dict.fromkeys(
            _HOSTILE_STREAM_IDS, 1
        )
    tables = await sql.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", pg_schema)
    assert tables == 3  # obelisk_events, obelisk_meta and obelisk_snapshots, all still there


# -- the server cannot be reached -----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_opening_a_store_on_a_closed_port_raises_store_unavailable(
    pg_schema: str, loop_errors: list[object]
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    store = PostgresEventStore(dsn, schema=pg_schema, connect_timeout=1)
    with pytest.raises(StoreUnavailable) as raised:
        await asyncio.wait_for(store.open(), 30)
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.connect(), 30)
    await store.close()


async def test_a_server_that_never_answers_fails_after_the_connect_timeout(
    pg_schema: str, loop_errors: list[object]
) -> None:
    # A socket that accepts connections (the kernel does) but never speaks PostgreSQL.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = PostgresEventStore(
            f"postgresql://postgres@127.0.0.1:{port}/postgres",
            schema=pg_schema,
            connect_timeout=0.3,
            pool_min_size=1,
        )
        with pytest.raises(StoreUnavailable, match="in time"):
            await asyncio.wait_for(store.open(), 30)
        await store.close()
