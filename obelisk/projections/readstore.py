"""The read store port: where projections keep their tables, checkpoints and leases.

Adapters (SQLite, PostgreSQL) give transactions with a handful of primitives; everything
else — the bookkeeping tables, leases, generations, the switch of a rebuild — is written
once here on top of them.

Bookkeeping tables (``obelisk_`` prefix):

* ``projections`` — one row per projection: its code version, live generation, the
  generation being rebuilt (if any), partition count and the paused flag.
* ``projection_checkpoints`` — one row per (projection, generation, partition): the
  position applied up to, and the lease (owner, epoch, expiry). The checkpoint row *is* the
  lease: every batch's transaction advances it only while its owner still holds it, so a
  worker that lost its lease (paused, killed and replaced, too slow to renew) cannot commit.
* ``projection_dead_letters`` — events a projection skipped under the dead-letter policy.
* ``projection_workers`` — live workers of partitioned projections, for fair shares.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from obelisk._arguments import check_bool, check_int, check_seconds, check_text
from obelisk.errors import ProjectionNotFound
from obelisk.projections._dialect import Dialect
from obelisk.projections._read_checks import (
    check_claim,
    check_letter,
    check_name,
    check_registration,
    check_tables,
)
from obelisk.projections._read_records import CheckpointRow, Claim, DeadLetter, ProjectionState
from obelisk.projections.tables import ChangeSet, Table

__all__ = [
    "Claim",
    "DeadLetter",
    "ProjectionState",
    "ReadStore",
    "ReadTransaction",
]


class ReadTransaction(abc.ABC):
    """One transaction on the read database (opened lazily by the first statement)."""

    dialect: Dialect

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed (when the driver says)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a query."""

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def flush(self, changes: Sequence[tuple[ChangeSet, str]]) -> None:
        """Write staged changes (each with its table's physical name), then clear them."""

    async def lock_schema_changes(self) -> None:
        """Take the database-wide lock that schema changes of read stores run under, until
        this transaction ends: processes starting together on a fresh database then create
        their tables one after another (PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` racing
        itself fails with a duplicate key). SQLite's write transactions are serial already.
        """
        return None  # SQLite: nothing to take


class ReadStore(abc.ABC):
    """A database holding read models, their checkpoints and leases.

    Use :func:`obelisk.projections.read_store_from_url` (``sqlite:///read.db``,
    ``postgresql://...``). It may be the event store's own database or another one.
    """

    dialect: Dialect
    prefix = "obelisk_"

    # -- adapter primitives ------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with store.transaction() as tx``: commit on success, roll back on error."""

    @abc.abstractmethod
    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, outside any batch (never takes the write lock)."""

    @abc.abstractmethod
    def qualified(self, name: str) -> str:
        """``name`` quoted (and schema-qualified where the store has a schema)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- names -------------------------------------------------------------------------

    @property
    def _states(self) -> str:
        return self.qualified(self.prefix + "projections")

    @property
    def _checkpoints(self) -> str:
        return self.qualified(self.prefix + "projection_checkpoints")

    @property
    def _dead_letters(self) -> str:
        return self.qualified(self.prefix + "projection_dead_letters")

    @property
    def _workers(self) -> str:
        return self.qualified(self.prefix + "projection_workers")

    def physical(self, table: Table, generation: int) -> str:
        """The qualified name of ``table``'s storage in ``generation``."""
        return self.qualified(table.physical(generation))

    # -- bookkeeping schema ------------------------------------------------------------

    def _bookkeeping_ddl(self) -> list[str]:
        d = self.dialect
        integer = d.column_type("integer")
        real = d.column_type("float")
        boolean = d.column_type("boolean")
        text = d.column_type("text")
        serial = "bigserial" if d.numbered else "INTEGER"
        return [
            f"CREATE TABLE IF NOT EXISTS {self._states} ("
            f"name {text} PRIMARY KEY, version {integer} NOT NULL, "
            f"live_generation {integer} NOT NULL, building_generation {integer}, "
            f"partitions {integer} NOT NULL, paused {boolean} NOT NULL, "
            f"updated_at {real} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._checkpoints} ("
            f"name {text} NOT NULL, generation {integer} NOT NULL, "
            f"partition_no {integer} NOT NULL, position {integer} NOT NULL, "
            f"owner {text}, epoch {integer} NOT NULL, lease_until {real}, "
            f"last_event_at {real}, updated_at {real}, "
            f"PRIMARY KEY (name, generation, partition_no))",
            f"CREATE TABLE IF NOT EXISTS {self._dead_letters} ("
            f"id {serial} PRIMARY KEY, projection {text} NOT NULL, "
            f"generation {integer} NOT NULL, position {integer} NOT NULL, "
            f"stream_id {text} NOT NULL, version {integer} NOT NULL, "
            f"event_type {text} NOT NULL, error {text} NOT NULL, recorded_at {real} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._workers} ("
            f"name {text} NOT NULL, worker_id {text} NOT NULL, seen_until {real} NOT NULL, "
            f"PRIMARY KEY (name, worker_id))",
        ]

    async def ensure_bookkeeping(self) -> None:
        """Create the bookkeeping tables if missing (idempotent; run by :meth:`open`)."""
        async with self.transaction() as tx:
            for statement in self._bookkeeping_ddl():
                await tx.execute(statement)

    # -- projections and generations ---------------------------------------------------

    async def state(self, name: str) -> ProjectionState | None:
        """The bookkeeping row of projection ``name``, or None before its first run."""
        check_name(name)
        async with self.transaction() as tx:
            return await self._state(tx, name)

    async def _state(self, tx: ReadTransaction, name: str) -> ProjectionState | None:
        row = await tx.fetchrow(
            self.dialect.sql(
                f"SELECT name, version, live_generation, building_generation, partitions, "
                f"paused FROM {self._states} WHERE name = ?"
            ),
            name,
        )
        if row is None:
            return None
        return ProjectionState(row[0], row[1], row[2], row[3], row[4], bool(row[5]))

    async def states(self) -> list[ProjectionState]:
        """Every projection this database holds, by name."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT name, version, live_generation, building_generation, partitions, "
                f"paused FROM {self._states} ORDER BY name"
            )
        return [ProjectionState(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    async def register(
        self, name: str, version: int, partitions: int, tables: Sequence[Table]
    ) -> ProjectionState:
        """The projection's state, creating generation 1 (tables, indexes, views and one
        checkpoint per partition) on its first run. Concurrent first runs are safe."""
        check_registration(name, version, partitions, tables)
        async with self.transaction() as tx:
            state = await self._state(tx, name)
            if state is not None:
                return state
            d = self.dialect
            inserted = await tx.execute(
                d.sql(
                    f"INSERT INTO {self._states} (name, version, live_generation, "
                    f"building_generation, partitions, paused, updated_at) "
                    f"VALUES (?, ?, 1, NULL, ?, {'false' if d.numbered else '0'}, {d.now}) "
                    f"ON CONFLICT (name) DO NOTHING"
                ),
                name,
                version,
                partitions,
            )
            if inserted:
                await self._create_generation(tx, tables, 1, with_indexes=True)
                await self._create_checkpoints(tx, name, 1, partitions, 0)
                await self._point_views(tx, tables, 1)
            state = await self._state(tx, name)
        assert state is not None
        return state

    async def _create_generation(
        self, tx: ReadTransaction, tables: Sequence[Table], generation: int, *, with_indexes: bool
    ) -> None:
        for table in tables:
            physical = self.physical(table, generation)
            await tx.execute(self.dialect.create_table(table, physical))
            if with_indexes:
                for number in range(len(table.indexes)):
                    await tx.execute(self.dialect.create_index(table, physical, number, generation))

    async def create_indexes(self, tables: Sequence[Table], generation: int) -> None:
        """Build the secondary indexes of ``generation`` (after a rebuild's bulk load)."""
        check_tables(tables)
        check_int("generation", generation)
        async with self.transaction() as tx:
            for table in tables:
                physical = self.physical(table, generation)
                for number in range(len(table.indexes)):
                    await tx.execute(self.dialect.create_index(table, physical, number, generation))
                if self.dialect.numbered:
                    # Fresh statistics: until autovacuum gets to the bulk-loaded table the
                    # planner would guess, and listings would sort instead of using the index.
                    await tx.execute(f"ANALYZE {physical}")

    async def _create_checkpoints(
        self, tx: ReadTransaction, name: str, generation: int, partitions: int, position: int
    ) -> None:
        await tx.executemany(
            self.dialect.sql(
                f"INSERT INTO {self._checkpoints} (name, generation, partition_no, position, "
                f"owner, epoch) VALUES (?, ?, ?, ?, NULL, 0) ON CONFLICT DO NOTHING"
            ),
            [(name, generation, p, position) for p in range(partitions)],
        )

    async def _point_views(
        self, tx: ReadTransaction, tables: Sequence[Table], generation: int
    ) -> None:
        for table in tables:
            view = self.qualified(table.name)
            await tx.execute(f"DROP VIEW IF EXISTS {view}")
            await tx.execute(
                f"CREATE VIEW {view} AS SELECT * FROM {self.physical(table, generation)}"
            )

    async def begin_rebuild(self, name: str, tables: Sequence[Table]) -> int:
        """The generation being rebuilt beside the live one (started now if none is):
        its tables without secondary indexes, and one checkpoint at position 0."""
        check_name(name)
        check_tables(tables)
        async with self.transaction() as tx:
            state = await self._state(tx, name)
            if state is None:
                raise ProjectionNotFound(f"no projection {name!r} in this read store")
            if state.building_generation is not None:
                return state.building_generation
            generation = state.live_generation + 1
            # Leftovers of an abandoned build of this number are not trusted.
            await self._drop_generation(tx, name, tables, generation)
            await self._create_generation(tx, tables, generation, with_indexes=False)
            await self._create_checkpoints(tx, name, generation, 1, 0)
            await tx.execute(
                self.dialect.sql(
                    f"UPDATE {self._states} SET building_generation = ?, "
                    f"updated_at = {self.dialect.now} WHERE name = ?"
                ),
                generation,
                name,
            )
        return generation

    async def switch(
        self,
        tx: ReadTransaction,
        name: str,
        version: int,
        tables: Sequence[Table],
        generation: int,
        position: int,
    ) -> None:
        """Inside a rebuild's last batch: make ``generation`` live (views, state, one
        checkpoint per partition at ``position``). Readers see the old tables or the new."""
        check_tables(tables)
        for number in (version, generation, position):
            check_int("version, generation and position", number)
        state = await self._state(tx, check_name(name))
        if state is None:
            raise ProjectionNotFound(f"no projection {name!r} in this read store")
        await self._point_views(tx, tables, generation)
        await self._create_checkpoints(tx, name, generation, state.partitions, position)
        await tx.execute(
            self.dialect.sql(
                f"UPDATE {self._checkpoints} SET position = ? WHERE name = ? AND generation = ?"
            ),
            position,
            name,
            generation,
        )
        await tx.execute(
            self.dialect.sql(
                f"UPDATE {self._states} SET live_generation = ?, building_generation = NULL, "
                f"version = ?, updated_at = {self.dialect.now} WHERE name = ?"
            ),
            generation,
            version,
            name,
        )

    async def drop_generation(self, name: str, tables: Sequence[Table], generation: int) -> None:
        """Drop a retired generation's tables and checkpoints."""
        check_name(name)
        check_tables(tables)
        check_int("generation", generation)
        async with self.transaction() as tx:
            await self._drop_generation(tx, name, tables, generation)

    async def _drop_generation(
        self, tx: ReadTransaction, name: str, tables: Sequence[Table], generation: int
    ) -> None:
        for table in tables:
            await tx.execute(f"DROP TABLE IF EXISTS {self.physical(table, generation)}")
        await tx.execute(
            self.dialect.sql(f"DELETE FROM {self._checkpoints} WHERE name = ? AND generation = ?"),
            name,
            generation,
        )

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume a projection's live runners (they stop at their next batch)."""
        check_name(name)
        check_bool("paused", paused)
        d = self.dialect
        async with self.transaction() as tx:
            changed = await tx.execute(
                d.sql(f"UPDATE {self._states} SET paused = ?, updated_at = {d.now} WHERE name = ?"),
                paused if d.numbered else int(paused),
                name,
            )
        if not changed:
            raise ProjectionNotFound(f"no projection {name!r} in this read store")

    # -- leases and checkpoints --------------------------------------------------------

    async def claim(
        self, name: str, generation: int, partition: int, owner: str, lease_seconds: float
    ) -> Claim | None:
        """Take the lease on one partition when it is free, expired or already ``owner``'s.

        Returns the claim (with a new epoch, which fences out the previous holder), or None
        while someone else holds it.
        """
        check_name(name)
        check_text("owner", owner)
        check_seconds("lease_seconds", lease_seconds)
        d = self.dialect
        async with self.transaction() as tx:
            row = await tx.fetchrow(
                d.sql(
                    f"UPDATE {self._checkpoints} SET owner = ?, epoch = epoch + 1, "
                    f"lease_until = {d.now} + ? "
                    f"WHERE name = ? AND generation = ? AND partition_no = ? AND "
                    f"(owner IS NULL OR owner = ? OR lease_until < {d.now}) "
                    f"RETURNING epoch, position"
                ),
                owner,
                lease_seconds,
                name,
                generation,
                partition,
                owner,
            )
        if row is None:
            return None
        return Claim(name, generation, partition, owner, int(row[0]), int(row[1]))

    async def release(self, claim: Claim) -> None:
        """Give a lease up at once (a graceful stop): the next claimant need not wait."""
        check_claim(claim)
        async with self.transaction() as tx:
            await tx.execute(
                self.dialect.sql(
                    f"UPDATE {self._checkpoints} SET owner = NULL, lease_until = NULL "
                    f"WHERE name = ? AND generation = ? AND partition_no = ? AND epoch = ?"
                ),
                claim.name,
                claim.generation,
                claim.partition,
                claim.epoch,
            )

    def _advance_sql(self) -> str:
        d = self.dialect
        paused = "s.paused = false" if d.numbered else "s.paused = 0"
        return d.sql(
            f"UPDATE {self._checkpoints} SET position = ?, lease_until = {d.now} + ?, "
            f"last_event_at = COALESCE(?, last_event_at), updated_at = {d.now} "
            f"WHERE name = ? AND generation = ? AND partition_no = ? AND epoch = ? AND "
            f"EXISTS (SELECT 1 FROM {self._states} s WHERE s.name = ? AND "
            f"((s.live_generation = ? AND {paused}) OR s.building_generation = ?))"
        )

    async def advance(
        self,
        tx: ReadTransaction,
        claim: Claim,
        position: int,
        lease_seconds: float,
        last_event_at: float | None,
    ) -> bool:
        """Move the checkpoint inside a batch's transaction, renewing the lease.

        False — and the caller must roll back — when the lease was lost, the projection is
        paused, or the generation is no longer the live one or the one being built.
        """
        check_claim(claim)
        check_int("position", position)
        check_seconds("lease_seconds", lease_seconds)
        if last_event_at is not None:
            check_seconds("last_event_at", last_event_at, zero=True)
        changed = await tx.execute(
            self._advance_sql(),
            position,
            lease_seconds,
            last_event_at,
            claim.name,
            claim.generation,
            claim.partition,
            claim.epoch,
            claim.name,
            claim.generation,
            claim.generation,
        )
        return changed == 1

    async def holds(self, claim: Claim) -> bool:
        """Whether ``claim`` could still commit (lease held, generation current, not paused)."""
        check_claim(claim)
        d = self.dialect
        paused = "s.paused = false" if d.numbered else "s.paused = 0"
        async with self.transaction() as tx:
            value = await tx.fetchval(
                d.sql(
                    f"SELECT 1 FROM {self._checkpoints} c JOIN {self._states} s "
                    f"ON s.name = c.name WHERE c.name = ? AND c.generation = ? AND "
                    f"c.partition_no = ? AND c.epoch = ? AND "
                    f"((s.live_generation = c.generation AND {paused}) "
                    f"OR s.building_generation = c.generation)"
                ),
                claim.name,
                claim.generation,
                claim.partition,
                claim.epoch,
            )
        return value is not None

    async def checkpoints(self, name: str) -> list[CheckpointRow]:
        """Every checkpoint of ``name`` (all generations), for status tools."""
        check_name(name)
        d = self.dialect
        async with self.transaction() as tx:
            rows = await tx.fetch(
                d.sql(
                    f"SELECT name, generation, partition_no, position, owner, "
                    f"CASE WHEN owner IS NULL THEN NULL ELSE lease_until - {d.now} END, "
                    f"last_event_at, updated_at FROM {self._checkpoints} "
                    f"WHERE name = ? ORDER BY generation, partition_no"
                ),
                name,
            )
        return [CheckpointRow(*r) for r in rows]

    async def live_position(self, name: str) -> int | None:
        """The position every partition of the live generation has applied (the lowest)."""
        check_name(name)
        d = self.dialect
        async with self.transaction() as tx:
            value = await tx.fetchval(
                d.sql(
                    f"SELECT MIN(c.position) FROM {self._checkpoints} c JOIN {self._states} s "
                    f"ON s.name = c.name AND c.generation = s.live_generation WHERE c.name = ?"
                ),
                name,
            )
        return None if value is None else int(value)

    # -- dead letters ------------------------------------------------------------------

    async def record_dead_letter(self, tx: ReadTransaction, letter: DeadLetter) -> None:
        letter = check_letter(letter)
        await tx.execute(
            self.dialect.sql(
                f"INSERT INTO {self._dead_letters} (projection, generation, position, "
                f"stream_id, version, event_type, error, recorded_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            *msgspec.structs.astuple(letter),
        )

    async def dead_letters(self, name: str, *, limit: int = 100) -> list[DeadLetter]:
        """The events ``name`` skipped, oldest first."""
        check_name(name)
        check_int("limit", limit, 0)
        async with self.transaction() as tx:
            rows = await tx.fetch(
                self.dialect.sql(
                    f"SELECT projection, generation, position, stream_id, version, "
                    f"event_type, error, recorded_at FROM {self._dead_letters} "
                    f"WHERE projection = ? ORDER BY id LIMIT ?"
                ),
                name,
                limit,
            )
        return [DeadLetter(*r) for r in rows]

    # -- workers of partitioned projections --------------------------------------------

    async def heartbeat(self, name: str, worker_id: str, lease_seconds: float) -> int:
        """Note ``worker_id`` alive for ``lease_seconds``; the number of live workers."""
        check_name(name)
        check_text("worker_id", worker_id)
        check_seconds("lease_seconds", lease_seconds)
        d = self.dialect
        async with self.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"INSERT INTO {self._workers} (name, worker_id, seen_until) "
                    f"VALUES (?, ?, {d.now} + ?) ON CONFLICT (name, worker_id) "
                    f"DO UPDATE SET seen_until = excluded.seen_until"
                ),
                name,
                worker_id,
                lease_seconds,
            )
            await tx.execute(
                d.sql(f"DELETE FROM {self._workers} WHERE name = ? AND seen_until < {d.now}"),
                name,
            )
            count = await tx.fetchval(
                d.sql(f"SELECT COUNT(*) FROM {self._workers} WHERE name = ?"), name
            )
        return int(count)

    async def leave(self, name: str, worker_id: str) -> None:
        check_name(name)
        check_text("worker_id", worker_id)
        async with self.transaction() as tx:
            await tx.execute(
                self.dialect.sql(f"DELETE FROM {self._workers} WHERE name = ? AND worker_id = ?"),
                name,
                worker_id,
            )
