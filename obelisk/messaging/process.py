"""Process managers (sagas): react to events, keep state, issue commands, with deadlines.

A process manager is a :class:`~obelisk.projections.Projection`: it follows the event log
with a runner, keeps its state in its own tables (staged like any read model), and instead
of calling the application directly it **schedules commands** — now, or at a deadline —
in the same transaction as its state and checkpoint:

    class Reservations(ProcessManager):
        name = "reservations"
        holds = Table("holds", {"reservation_id": "text", "state": "text"}, key="reservation_id")

        @handles(SeatsReserved)
        async def reserved(self, event: SeatsReserved, ctx: Context) -> None:
            ctx.upsert(self.holds, reservation_id=ctx.stream_id, state="held")
            await self.schedule(ctx, "expire", ExpireReservation(reservation_id=ctx.stream_id),
                                after=600)               # unless paid within 10 minutes

        @handles(PaymentConfirmed)
        async def paid(self, event: PaymentConfirmed, ctx: Context) -> None:
            await self.cancel(ctx, "expire")             # the deadline will not fire

A :class:`CommandScheduler` sends due commands through ``app.handle`` with an idempotency
key (the scheduled command's id): a command sent twice — the scheduler died between the
send and its bookkeeping — records the same event ids, which the store takes as a retry.
So each command takes effect once, even across restarts; a deadline that fell due while
every scheduler was down fires once when one starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from obelisk.application.commands import Command, encode_command
from obelisk.errors import (
    CommandRejected,
    ConcurrencyError,
    DomainError,
    IdempotencyConflict,
    StoreUnavailable,
    ValidationError,
)
from obelisk.projections.projection import Context, Projection
from obelisk.projections.readstore import ReadStore

if TYPE_CHECKING:
    from obelisk.application.app import Application

__all__ = ["CommandScheduler", "ProcessManager", "ScheduledCommand"]

_log = logging.getLogger("obelisk.messaging.process")

SCHEDULED_TABLE: Final = "obelisk_scheduled_commands"


class ScheduledCommand(msgspec.Struct, frozen=True):
    """A command waiting to be sent (``due_at``: seconds since the epoch)."""

    id: str
    manager: str
    process_id: str
    name: str
    due_at: float
    command_type: str
    payload: bytes
    attempts: int


async def ensure_scheduled_table(read_store: ReadStore) -> str:
    """Create the scheduled-commands table if missing; its qualified name."""
    d = read_store.dialect
    table = read_store.qualified(SCHEDULED_TABLE)
    text, real, integer = d.column_type("text"), d.column_type("float"), d.column_type("integer")
    async with read_store.transaction() as tx:
        await tx.lock_schema_changes()
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"id {text} PRIMARY KEY, manager {text} NOT NULL, process_id {text} NOT NULL, "
            f"name {text} NOT NULL, due_at {real} NOT NULL, command_type {text} NOT NULL, "
            f"payload {d.column_type('bytes')} NOT NULL, attempts {integer} NOT NULL, "
            f"claimed_by {text}, claimed_until {real}, sent_at {real}, outcome {text})"
        )
        await tx.execute(
            f"CREATE INDEX IF NOT EXISTS {SCHEDULED_TABLE}_due ON {table} (sent_at, due_at)"
        )
        # Scheduling replaces and cancelling removes a process's deadline by name: without
        # this index each of them scanned the whole table (quadratic in a busy sale).
        await tx.execute(
            f"CREATE INDEX IF NOT EXISTS {SCHEDULED_TABLE}_process "
            f"ON {table} (manager, process_id, name)"
        )
    return table


class ProcessManager(Projection):
    """A projection that schedules commands; see the module docstring.

    The scheduled-commands table must exist before the runner starts
    (:meth:`CommandScheduler.open` creates it, or :func:`ensure_scheduled_table`). Process
    managers are never rebuilt (a replay would schedule commands that were replaced or
    cancelled since): give a changed one a new name.
    """

    rebuildable = False

    async def schedule(
        self,
        ctx: Context,
        name: str,
        command: Command,
        *,
        at: float | None = None,
        after: float | None = None,
        process_id: str | None = None,
    ) -> str:
        """Schedule ``command`` for process ``process_id`` (default: the event's stream) at
        ``at`` (epoch seconds) or ``after`` seconds from the event's time (default: now),
        in the batch's transaction; returns its id. A deadline of the same ``name`` in
        the same process replaces an unsent earlier one. (Handlers that schedule are
        ``async``.)"""
        if at is not None and after is not None:
            raise ValidationError("give at= or after=, not both")
        due = at if at is not None else ctx.stored.recorded_at + (after or 0.0)
        process = process_id or ctx.stream_id
        manager = type(self).name
        # The id follows from the event and the name: a batch applied again (after a
        # crash, or in a rebuild) schedules the same id, and the command's effect is once.
        ident = str(uuid.uuid5(_NAMESPACE, f"{manager}\x1f{ctx.position}\x1f{name}"))
        d = ctx._tx.dialect
        table = _qualified(ctx)
        await ctx.execute(
            d.sql(
                f"DELETE FROM {table} WHERE manager = ? AND process_id = ? AND name = ? "
                f"AND sent_at IS NULL AND claimed_until IS NULL AND id <> ?"
            ),
            manager,
            process,
            name,
            ident,
        )
        await ctx.execute(
            d.sql(
                f"INSERT INTO {table} (id, manager, process_id, name, due_at, command_type, "
                f"payload, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT DO NOTHING"
            ),
            ident,
            manager,
            process,
            name,
            due,
            command.command_type,
            encode_command(command),  # ValidationError now, not a command unreadable when due
        )
        return ident

    async def send(self, ctx: Context, command: Command, *, name: str = "send") -> str:
        """Schedule ``command`` to be sent now (when the batch has committed)."""
        return await self.schedule(ctx, name, command, at=time.time())

    async def cancel(self, ctx: Context, name: str, *, process_id: str | None = None) -> int:
        """Cancel the unsent deadline ``name`` of the process (default: the event's stream);
        how many were cancelled. A deadline already being sent is not stopped."""
        d = ctx._tx.dialect
        table = _qualified(ctx)
        return await ctx.execute(
            d.sql(
                f"DELETE FROM {table} WHERE manager = ? AND process_id = ? AND name = ? "
                f"AND sent_at IS NULL AND claimed_until IS NULL"
            ),
            type(self).name,
            process_id or ctx.stream_id,
            name,
        )


_NAMESPACE: Final = uuid.UUID("8f1c2e3a-9b7d-4c6e-8a5f-1d2e3f4a5b6c")


def _qualified(ctx: Context) -> str:
    # The table sits beside the bookkeeping tables, in the read store's schema. (Taken
    # from the projection's own tables before, a process manager — which has none —
    # scheduled into PostgreSQL's public schema while its scheduler read the store's.)
    if ctx._qualify is not None:
        return ctx._qualify(SCHEDULED_TABLE)
    return f'"{SCHEDULED_TABLE}"'


def _scheduled(row: Sequence[Any]) -> ScheduledCommand:
    ident, manager, process, name, due, command_type, payload, attempts = row
    return ScheduledCommand(
        ident, manager, process, name, float(due), command_type, bytes(payload), int(attempts)
    )


class CommandScheduler:
    """Sends scheduled commands when due, through an Application; each takes effect once.

    Args:
        read_store: where process managers schedule (the scheduled-commands table).
        app: the application handling the commands.
        lease_seconds: a claimed command not sent within this is claimed again (its
            scheduler died); the idempotency key makes the second send harmless.
        poll_interval: the longest sleep between looks for due commands.
        max_attempts: sends that fail with a transient error before giving up.
    """

    def __init__(
        self,
        read_store: ReadStore,
        app: Application,
        *,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        max_attempts: int = 10,
        owner: str | None = None,
    ) -> None:
        self.read_store = read_store
        self.app = app
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.owner = owner or uuid.uuid4().hex[:12]
        self.sent = 0
        self.rejected = 0
        self.failed = 0
        self._table = ""
        self._stopping = False
        self._wake = asyncio.Event()

    async def open(self) -> None:
        self._table = await ensure_scheduled_table(self.read_store)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Look for due commands now (e.g. after a process manager's batch)."""
        self._wake.set()

    async def run(self) -> None:
        """Send due commands until :meth:`stop`."""
        await self.open()
        while not self._stopping:
            self._wake.clear()  # before looking: a wake-up during the send is not lost
            try:
                sent = await self.send_due()
            except StoreUnavailable as exc:
                _log.warning("scheduler %s: %s", self.owner, exc)
                sent = 0
            if sent:
                continue
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def send_due(self, limit: int = 100) -> int:
        """Claim and send the commands due now; how many were settled."""
        claimed = await self._claim(limit)
        for scheduled in claimed:
            await self._send(scheduled)
        return len(claimed)

    async def pending(self) -> list[ScheduledCommand]:
        """The commands not sent yet, soonest first."""
        if not self._table:
            await self.open()
        rows = await self.read_store.query(
            f"SELECT id, manager, process_id, name, due_at, command_type, payload, attempts "
            f"FROM {self._table} WHERE sent_at IS NULL ORDER BY due_at"
        )
        return [_scheduled(r) for r in rows]

    async def _claim(self, limit: int) -> list[ScheduledCommand]:
        if not self._table:
            await self.open()
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            rows = await tx.fetch(
                d.sql(
                    f"SELECT id, manager, process_id, name, due_at, command_type, payload, "
                    f"attempts FROM {self._table} WHERE sent_at IS NULL AND due_at <= {d.now} "
                    f"AND (claimed_until IS NULL OR claimed_until < {d.now}) "
                    f"ORDER BY due_at LIMIT ?"
                ),
                limit,
            )
            out = []
            for row in rows:
                changed = await tx.execute(
                    d.sql(
                        f"UPDATE {self._table} SET claimed_by = ?, claimed_until = {d.now} + ?, "
                        f"attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL AND "
                        f"(claimed_until IS NULL OR claimed_until < {d.now})"
                    ),
                    self.owner,
                    float(self.lease_seconds),
                    row[0],
                )
                if changed:  # another scheduler may have taken it between the two
                    claimed = _scheduled(row)
                    out.append(msgspec.structs.replace(claimed, attempts=claimed.attempts + 1))
        return out

    async def _send(self, scheduled: ScheduledCommand) -> None:
        outcome = "sent"
        try:
            command = self.app.commands.decode(scheduled.command_type, scheduled.payload)
            await self.app.handle(
                command,
                correlation_id=scheduled.process_id,
                causation_id=scheduled.id,
                idempotency_key=scheduled.id,
            )
            self.sent += 1
        except IdempotencyConflict:
            self.sent += 1  # sent before (by a scheduler that died before its bookkeeping)
        except (CommandRejected, DomainError, ValidationError) as exc:
            # The domain said no (the reservation was paid meanwhile): settled, recorded.
            outcome = f"rejected: {exc}"
            self.rejected += 1
        except (StoreUnavailable, ConcurrencyError) as exc:
            # Both pass: a lost connection comes back; a conflict (another process wrote
            # the aggregate after this one cached it) is gone on a fresh load.
            if scheduled.attempts < self.max_attempts:
                await self._release(scheduled)
                _log.warning("scheduler: %s will be retried: %s", scheduled.id, exc)
                return
            outcome = f"failed: {exc}"
            self.failed += 1
        except Exception as exc:  # a bug in a handler: recorded, not retried forever
            outcome = f"failed: {type(exc).__name__}: {exc}"
            self.failed += 1
            _log.exception("scheduled command %s failed", scheduled.id)
        await self._settle(scheduled, outcome)

    async def _settle(self, scheduled: ScheduledCommand, outcome: str) -> None:
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"UPDATE {self._table} SET sent_at = {d.now}, outcome = ?, "
                    f"claimed_until = NULL WHERE id = ? AND claimed_by = ?"
                ),
                outcome[:1000],
                scheduled.id,
                self.owner,
            )

    async def _release(self, scheduled: ScheduledCommand) -> None:
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"UPDATE {self._table} SET claimed_until = NULL WHERE id = ? AND claimed_by = ?"
                ),
                scheduled.id,
                self.owner,
            )

    async def outcomes(self, process_id: str) -> Sequence[tuple[str, str | None]]:
        """(name, outcome) of a process's commands, sent or not (None: not yet)."""
        if not self._table:
            await self.open()
        rows = await self.read_store.query(
            self.read_store.dialect.sql(
                f"SELECT name, outcome FROM {self._table} WHERE process_id = ? ORDER BY due_at"
            ),
            process_id,
        )
        return [(r[0], r[1]) for r in rows]
