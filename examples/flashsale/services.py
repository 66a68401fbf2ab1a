"""Simulated external services: a payment gateway and a mailer, slow and unreliable on
purpose, each keeping its own ledger in a database of its own (the sale's read database
stands in for "the provider's side"; the tables are prefixed ``sim_``).

They behave like the real thing in the ways that matter to the workers calling them:

* **latency**: every call waits ``latency`` seconds (give or take half), off the command
  path — this is why payment and e-mail are workers, not part of ``POST /reservations``;
* **transient failures** (``failure_rate``): :class:`ServiceUnavailable`, to be retried;
* **declines** (gateway, ``decline_rate``): decided by the reservation id, so a retried
  charge is declined again, as a real card would be;
* **idempotency**: a charge is keyed by its reservation (charging twice returns the first
  charge), an e-mail by its message id (sending twice delivers once) — the way providers'
  idempotency keys make a worker's retry safe.

The ledgers let the demo verify the sale from the outside: every charge is either the
charge of a paid reservation or refunded; every paid or expired reservation got one e-mail.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass, field

from examples.flashsale.read_models import read_sql
from obelisk.projections.readstore import ReadStore

__all__ = ["Declined", "Mailer", "PaymentGateway", "ServiceUnavailable", "SimulatedService"]


class ServiceUnavailable(Exception):
    """The service did not answer this time; the call may be retried."""


class Declined(Exception):
    """The gateway refused the charge (retrying gives the same answer)."""


@dataclass
class SimulatedService:
    """Latency and failure settings shared by the simulated services."""

    store: ReadStore
    latency: float = 0.005
    failure_rate: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    calls: int = 0
    failures: int = 0

    async def _call(self) -> None:
        self.calls += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency * (0.5 + self.rng.random()))
        if self.rng.random() < self.failure_rate:
            self.failures += 1
            raise ServiceUnavailable(f"{type(self).__name__}: temporarily unavailable")


@dataclass
class PaymentGateway(SimulatedService):
    """Charges and refunds; see the module docstring."""

    decline_rate: float = 0.05

    async def ensure(self) -> None:
        d = self.store.dialect
        async with self.store.transaction() as tx:
            await tx.lock_schema_changes()
            await tx.execute(read_sql(self.store,
                "CREATE TABLE IF NOT EXISTS {sim_charges} ("
                f"reservation_id {d.column_type('text')} PRIMARY KEY, "
                f"charge_id {d.column_type('text')} NOT NULL, "
                f"amount_cents {d.column_type('integer')} NOT NULL, "
                f"state {d.column_type('text')} NOT NULL)"
            ))  # fmt: skip

    def declines(self, reservation_id: str) -> bool:
        digest = hashlib.blake2b(reservation_id.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") / 2**32 < self.decline_rate

    async def charge(self, reservation_id: str, amount_cents: int) -> str:
        """Charge a reservation once; its charge id (the first one, when charged before)."""
        await self._call()
        if self.declines(reservation_id):
            raise Declined("card declined")
        async with self.store.transaction() as tx:
            await tx.execute(
                read_sql(
                    self.store,
                    "INSERT INTO {sim_charges} (reservation_id, charge_id, amount_cents, state) "
                    "VALUES (?, ?, ?, 'charged') ON CONFLICT (reservation_id) DO NOTHING",
                ),
                reservation_id,
                f"ch_{uuid.uuid4().hex[:16]}",
                amount_cents,
            )
            charge_id = await tx.fetchval(
                read_sql(
                    self.store, "SELECT charge_id FROM {sim_charges} WHERE reservation_id = ?"
                ),
                reservation_id,
            )
        return str(charge_id)

    async def refund(self, charge_id: str) -> None:
        """Give a charge's money back (refunding twice is harmless)."""
        await self._call()
        async with self.store.transaction() as tx:
            await tx.execute(
                read_sql(
                    self.store, "UPDATE {sim_charges} SET state = 'refunded' WHERE charge_id = ?"
                ),
                charge_id,
            )

    async def ledger(self) -> dict[str, tuple[str, int, str]]:
        """reservation id -> (charge id, amount, state) of every charge made."""
        rows = await self.store.query(read_sql(self.store,
            "SELECT reservation_id, charge_id, amount_cents, state FROM {sim_charges}"
        ))  # fmt: skip
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


@dataclass
class Mailer(SimulatedService):
    """Sends e-mails, each message id delivered once."""

    async def ensure(self) -> None:
        d = self.store.dialect
        async with self.store.transaction() as tx:
            await tx.lock_schema_changes()
            await tx.execute(read_sql(self.store,
                "CREATE TABLE IF NOT EXISTS {sim_emails} ("
                f"message_id {d.column_type('text')} PRIMARY KEY, "
                f"recipient {d.column_type('text')} NOT NULL, "
                f"kind {d.column_type('text')} NOT NULL, "
                f"reservation_id {d.column_type('text')} NOT NULL)"
            ))  # fmt: skip

    async def send(self, message_id: str, recipient: str, kind: str, reservation_id: str) -> None:
        await self._call()
        async with self.store.transaction() as tx:
            await tx.execute(
                read_sql(
                    self.store,
                    "INSERT INTO {sim_emails} (message_id, recipient, kind, reservation_id) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                ),
                message_id,
                recipient,
                kind,
                reservation_id,
            )

    async def sent(self) -> list[tuple[str, str]]:
        """(kind, reservation id) of every e-mail delivered."""
        rows = await self.store.query(
            read_sql(self.store, "SELECT kind, reservation_id FROM {sim_emails}")
        )
        return [(row[0], row[1]) for row in rows]
