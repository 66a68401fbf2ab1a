"""The SQLite read store: read models in a SQLite file (the event store's or another).

Statements run on the event loop's thread: SQLite answers in microseconds, and a hop to a
worker thread per statement would cost more than the statement. The one wait that could
block the loop — another writer holding the file's write lock — never happens inside
SQLite: the connection does not wait for locks (``timeout=0``); ``BEGIN IMMEDIATE`` is
retried with ``asyncio.sleep`` until the lock is free or ``busy_timeout`` has passed.

``synchronous=NORMAL``: a commit is not fsynced. Power loss may lose the last batches, but
never half of one (changes and checkpoint commit together), and the runner re-applies them
from the older checkpoint: the effect is still exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from obelisk._arguments import clip
from obelisk.errors import StoreClosed, StoreError, StoreUnavailable, UnstorableValue
from obelisk.projections._dialect import SQLITE
from obelisk.projections._json_values import check_float_values, encode_json_values
from obelisk.projections._read_checks import check_changes
from obelisk.projections.readstore import ReadStore, ReadTransaction
from obelisk.projections.tables import ChangeSet, quote

__all__ = ["SQLiteReadStore"]


class _SQLiteTransaction(ReadTransaction):
    dialect = SQLITE

    def __init__(self, store: SQLiteReadStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self.begun = False

    async def _begin(self) -> None:
        if not self.begun:
            await self._store._begin(self._conn)
            self.begun = True

    async def execute(self, sql: str, *args: Any) -> int:
        await self._begin()
        with _errors():
            return int(self._conn.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._begin()
        with _errors():
            self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        await self._begin()
        with _errors():
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
            return rows

    async def flush(self, changes: Sequence[tuple[ChangeSet, str]]) -> None:
        if not any(len(change) for change, _ in check_changes(changes)):
            return
        await self._begin()
        conn = self._conn
        for change, physical in changes:
            if not change:
                continue
            table = change.table
            deletes, upserts, adds = change.plan()
            with _errors():
                if deletes:
                    keys = deletes if len(table.key) > 1 else [(k,) for k in deletes]
                    conn.executemany(SQLITE.delete(table, physical), keys)
                for columns, rows in upserts:
                    check_float_values(table, columns, rows)
                    values = encode_json_values(table, columns, rows)
                    conn.executemany(SQLITE.upsert(table, physical, columns), values)
                for columns, rows in adds:
                    check_float_values(table, columns, rows)
                    conn.executemany(SQLITE.add(table, physical, columns), rows)
            change.clear()


@contextmanager
def _errors() -> Iterator[None]:
    """sqlite3's errors as obelisk's (a bad statement or row is not a transient fault)."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"read model constraint failed: {exc}") from exc
    except (sqlite3.DataError, OverflowError, ValueError, TypeError) as exc:
        # A parameter SQLite cannot bind: beyond 64 bits, a lone surrogate, a type it has
        # no storage class for, a string or blob over its limit (sqlite3.DataError).
        raise UnstorableValue(f"read store refused a value: {clip(str(exc))}") from exc
    except (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise StoreError(f"read store statement failed: {exc}") from exc


class SQLiteReadStore(ReadStore):
    """Read models in one SQLite file.

    Args:
        path: the database file (created if missing). It may be the event store's file:
            read models then share its write lock, briefly, once per batch.
        busy_timeout: how long a batch waits for the write lock before failing.
    """

    dialect = SQLITE

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection
        self._owner: asyncio.Task[object] | None = None  # the task holding it (re-entry check)

    def __repr__(self) -> str:
        return f"SQLiteReadStore({self.path!r})"

    def qualified(self, name: str) -> str:
        return quote(name)

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open read store {self.path}: {exc}") from exc
        self._conn = conn
        await self.ensure_bookkeeping()
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = ON")
        self._reader = reader

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        # Its own connection: a WAL reader sees the last commit and never waits for the
        # writer, so queries run beside batches.
        reader = self._reader
        if reader is None:
            raise StoreClosed(f"{self!r} is not open")
        with _errors():
            rows: list[tuple[Any, ...]] = reader.execute(sql, args).fetchall()
            return rows

    async def _begin(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"read store cannot begin: {exc}") from exc
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"read store {self.path} stayed locked for {self.busy_timeout}s"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteTransaction]:
        task = asyncio.current_task()
        if self._lock.locked() and self._owner is not None and self._owner is task:
            # One connection, one transaction at a time: waiting here would wait forever.
            raise StoreError(
                f"{self!r}: a transaction is already open in this task (a handler that "
                "opens its own read-store transaction inside the batch's or the inbox's: "
                "use the transaction it was given, ctx.tx / ctx.execute)"
            )
        async with self._lock:
            self._owner = task
            try:
                async with self._begun() as tx:
                    yield tx
            finally:
                self._owner = None

    @asynccontextmanager
    async def _begun(self) -> AsyncIterator[_SQLiteTransaction]:
        """A transaction on the connection (the caller holds the lock): committed on a clean
        exit, rolled back on an exception."""
        conn = self._conn
        if conn is None:
            raise StoreClosed(f"{self!r} is not open")
        tx = _SQLiteTransaction(self, conn)
        try:
            yield tx
        except BaseException:
            if tx.begun:
                conn.execute("ROLLBACK")
            raise
        if tx.begun:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"read store commit failed: {exc}") from exc
