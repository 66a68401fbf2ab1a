"""The idempotent inbox: a redelivered message has no second effect.

Brokers deliver at least once: a worker that dies after its handler committed and before
its acknowledgement reached the broker sees the message again. The inbox records each
handled message id in the *same* transaction as the handler's database effects, so either
both commit or neither does; a message whose id is already recorded is acknowledged
without running the handler again.

    async with inbox.transaction("billing", message.id) as tx:
        if tx is not None:          # None: handled before, skip
            await tx.execute("UPDATE invoices SET paid = true WHERE id = $1", invoice_id)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from obelisk.projections.readstore import ReadStore, ReadTransaction
from obelisk.store.identifiers import check_identifier

__all__ = ["Inbox"]


class Inbox:
    """Handled message ids per consumer group, in a read store's database.

    Args:
        read_store: the database the handlers write to (their effects and the inbox must
            share transactions).
        table: the inbox table's name.
    """

    def __init__(self, read_store: ReadStore, *, table: str = "obelisk_inbox") -> None:
        self.read_store = read_store
        self.table = read_store.qualified(check_identifier("table name", table))
        self._ready = False

    async def ensure(self) -> None:
        """Create the inbox table if missing."""
        if self._ready:
            return
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.lock_schema_changes()
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                f"consumer {d.column_type('text')} NOT NULL, "
                f"message_id {d.column_type('text')} NOT NULL, "
                f"handled_at {d.column_type('float')} NOT NULL, "
                f"PRIMARY KEY (consumer, message_id))"
            )
        self._ready = True

    @asynccontextmanager
    async def transaction(
        self, consumer: str, message_id: str
    ) -> AsyncIterator[ReadTransaction | None]:
        """A transaction that records ``message_id`` as handled by ``consumer``; None when
        it was handled before (then nothing is written). Commits on a clean exit."""
        await self.ensure()
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            inserted = await tx.execute(
                d.sql(
                    f"INSERT INTO {self.table} (consumer, message_id, handled_at) "
                    f"VALUES (?, ?, {d.now}) ON CONFLICT DO NOTHING"
                ),
                consumer,
                message_id,
            )
            yield tx if inserted else None

    async def record_many(
        self, tx: ReadTransaction, consumer: str, message_ids: Sequence[str]
    ) -> set[str]:
        """In ``tx``: record ``message_ids`` as handled by ``consumer``; the ids that were
        not recorded before (one statement for them all). Call :meth:`ensure` first, outside
        the transaction."""
        d = self.read_store.dialect
        unique = list(dict.fromkeys(message_ids))
        if d.numbered:
            rows = await tx.fetch(
                f"INSERT INTO {self.table} (consumer, message_id, handled_at) "
                f"SELECT $1, unnest($2::text[]), {d.now} ON CONFLICT DO NOTHING "
                f"RETURNING message_id",
                consumer,
                unique,
            )
        else:
            values = ", ".join(f"(?, ?, {d.now})" for _ in unique)
            params: list[str] = []
            for ident in unique:
                params.extend((consumer, ident))
            rows = await tx.fetch(
                f"INSERT INTO {self.table} (consumer, message_id, handled_at) VALUES {values} "
                f"ON CONFLICT DO NOTHING RETURNING message_id",
                *params,
            )
        return {row[0] for row in rows}

    async def handled(self, consumer: str, message_id: str) -> bool:
        """Whether ``consumer`` has handled ``message_id``."""
        await self.ensure()
        rows = await self.read_store.query(
            self.read_store.dialect.sql(
                f"SELECT 1 FROM {self.table} WHERE consumer = ? AND message_id = ?"
            ),
            consumer,
            message_id,
        )
        return bool(rows)

    async def forget_before(self, seconds_ago: float) -> int:
        """Delete records older than ``seconds_ago`` (keep them longer than any redelivery
        could take); the number deleted."""
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            deleted = await tx.execute(
                d.sql(f"DELETE FROM {self.table} WHERE handled_at < {d.now} - ?"),
                float(seconds_ago),
            )
        return int(deleted)
