"""The PostgreSQL read store: read models in a schema of a PostgreSQL database.

Batches write each group of staged changes with one statement over arrays
(``INSERT ... SELECT * FROM unnest($1::text[], ...) ON CONFLICT ...``): a page of a thousand
events costs a handful of round trips, not a thousand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from obelisk._arguments import clip
from obelisk.errors import StoreClosed, StoreError, StoreUnavailable, UnstorableValue
from obelisk.projections._dialect import POSTGRES
from obelisk.projections._json_values import encode_json_values
from obelisk.projections._read_checks import check_changes
from obelisk.projections.readstore import ReadStore, ReadTransaction
from obelisk.projections.tables import ChangeSet, quote
from obelisk.store.identifiers import check_identifier

__all__ = ["PostgresReadStore"]

# The advisory lock every read store's schema change takes (see lock_schema_changes).
SCHEMA_LOCK = 7401517

# Errors that mean "the server or the connection went away": the runner retries them.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


# Bad values, not faults of the statement or the connection: asyncpg.DataError is what the
# driver raises for a parameter it cannot encode (a lone surrogate, an int beyond 64 bits,
# a wrong type) and what the server's class-22 errors are (NUL in text, a number out of
# range); RecursionError escapes asyncpg while it describes a value nested thousands deep.
_VALUE_ERRORS = (asyncpg.DataError, RecursionError, TypeError, OverflowError, UnicodeError)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, _VALUE_ERRORS):
        return UnstorableValue(f"read store refused a value: {clip(str(exc))}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreUnavailable(f"read store connection failed: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"read store statement failed: {exc}")
    return exc


class _PostgresTransaction(ReadTransaction):
    dialect = POSTGRES

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def lock_schema_changes(self) -> None:
        await self.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._conn.execute(sql, *args)
        except Exception as exc:
            raise _translate(exc) from exc
        # "UPDATE 3", "INSERT 0 1", "DELETE 0", "CREATE TABLE": the count is the last word.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, rows)
        except Exception as exc:
            raise _translate(exc) from exc

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in await self._conn.fetch(sql, *args)]
        except Exception as exc:
            raise _translate(exc) from exc

    async def flush(self, changes: Sequence[tuple[ChangeSet, str]]) -> None:
        conn = self._conn
        changes = check_changes(changes)
        try:
            for change, physical in changes:
                if not change:
                    continue
                table = change.table
                deletes, upserts, adds = change.plan()
                if deletes:
                    columns = list(zip(*deletes, strict=True)) if len(table.key) > 1 else [deletes]
                    await conn.execute(POSTGRES.delete(table, physical), *columns)
                for names, rows in upserts:
                    values = encode_json_values(table, names, rows)
                    await conn.execute(
                        POSTGRES.upsert(table, physical, names), *zip(*values, strict=True)
                    )
                for names, rows in adds:
                    await conn.execute(
                        POSTGRES.add(table, physical, names), *zip(*rows, strict=True)
                    )
                change.clear()
        except Exception as exc:
            raise _translate(exc) from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset.

    asyncpg's default runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per transaction (measured: a
    message worker's inbox transaction is 5 round trips instead of 4). The read store's
    own statements never change session state (its advisory locks are transaction-scoped,
    it never LISTENs); handlers that need a setting use ``SET LOCAL``.
    """


class PostgresReadStore(ReadStore):
    """Read models in a PostgreSQL schema.

    Args:
        dsn: a libpq URI; may be the event store's database.
        schema: the schema holding the read models and bookkeeping (created if missing);
            the event store's identifier rule (``docs/postgres.md``).
        pool_max_size: connections for batches and queries (one per running partition
            is plenty).
        synchronous_commit: wait for each batch's commit to reach the disk. Off by default:
            a crash of the database server may then lose the last batches, but never half
            of one — changes and checkpoint commit together — and the runner applies them
            again from the older checkpoint, so the effect is still exactly once. Measured:
            off makes a 1,000-event batch about 40% cheaper on this machine's disk.
    """

    dialect = POSTGRES

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        pool_max_size: int = 4,
        synchronous_commit: bool = False,
    ) -> None:
        self.dsn = dsn
        self.synchronous_commit = synchronous_commit
        # The event store's rule: a schema PostgreSQL would cut at 63 bytes is refused, or
        # two read stores whose schemas differ only after the cut would share one.
        self.schema = check_identifier("schema", schema)
        self.pool_max_size = pool_max_size
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresReadStore(schema={self.schema!r})"

    def qualified(self, name: str) -> str:
        return f"{quote(self.schema)}.{quote(name)}"

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_max_size,
                timeout=10,
                # The pool is the read store's own: the setting reaches no event appends.
                server_settings={"synchronous_commit": "on" if self.synchronous_commit else "off"},
                reset=_keep_session,
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect the read store: {exc}") from exc
        assert pool is not None
        self._pool = pool
        try:
            # Concurrent first opens must not race on CREATE SCHEMA/TABLE IF NOT EXISTS.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            await self.ensure_bookkeeping()
        except BaseException:
            await self.close()
            raise

    async def ensure_bookkeeping(self) -> None:
        async with self.transaction() as tx:
            await tx.lock_schema_changes()
            for statement in self._bookkeeping_ddl():
                await tx.execute(statement)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        pool = self._pool
        if pool is None:
            raise StoreClosed(f"{self!r} is not open")
        try:
            return [tuple(r) for r in await pool.fetch(sql, *args)]
        except Exception as exc:
            raise _translate(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        pool = self._pool
        if pool is None:
            raise StoreClosed(f"{self!r} is not open")
        try:
            conn = await pool.acquire()
        except Exception as exc:
            raise _translate(exc) from exc
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except Exception as exc:
                raise _translate(exc) from exc
            try:
                yield _PostgresTransaction(conn)
            except BaseException:
                try:
                    await tx.rollback()
                except Exception:  # the connection is gone: nothing to roll back
                    pass
                raise
            try:
                await tx.commit()
            except Exception as exc:
                raise _translate(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except Exception:
                conn.terminate()
