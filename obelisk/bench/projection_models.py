"""The read models the projection workloads build from the bank demo's events.

* :class:`Balances`: one row per account, kept by plain (sync) handlers that only stage
  changes — the fast kind, whose whole page is merged per key and written set-based.
* :class:`Ledger`: a ledger row per deposit and a balance per account, kept by async
  handlers that run their own SQL per event (PostgreSQL placeholders): the kind whose cost
  is round trips, which partitioning across processes is meant to spread.

They live in a module of their own so that helper processes (:mod:`obelisk.bench.child`)
import the very classes the workloads register.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from obelisk.bench.measure import BenchError
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.projections import Context, Projection, ReadStore, Table, handles

__all__ = ["PROJECTIONS", "Balances", "Ledger", "numbered_balances", "read_balances"]

_BALANCE_COLUMNS: Final[Mapping[str, Literal["text", "integer"]]] = {
    "account_id": "text",
    "balance": "integer",
}


class Balances(Projection):
    """Account balances, by staged upserts and increments."""

    name = "bench_balances"
    balances = Table("balances", _BALANCE_COLUMNS, key="account_id")

    @handles(AccountOpened)
    def opened(self, event: AccountOpened, ctx: Context) -> None:
        ctx.upsert(self.balances, account_id=ctx.stream_id, balance=0)

    @handles(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, ctx: Context) -> None:
        ctx.add(self.balances, ctx.stream_id, balance=event.amount)


def numbered_balances(number: int) -> Balances:
    """A :class:`Balances` with its own name and table, so several fill one read store.

    ``tables`` is given explicitly: the base class's table would otherwise be collected
    too (tables are gathered by name over the whole class hierarchy).
    """
    table = Table(f"balances_{number}", _BALANCE_COLUMNS, key="account_id")
    cls = type(
        f"Balances{number}",
        (Balances,),
        {"name": f"bench_balances_{number}", "balances": table, "tables": (table,)},
    )
    projection = cls()
    assert isinstance(projection, Balances)
    return projection


class Ledger(Projection):
    """A ledger of deposits and a balance per account, by SQL run in each handler.

    Each deposit is two statements (a ledger INSERT, a balance UPDATE): two round trips
    per event on PostgreSQL, inside the batch's transaction.
    """

    name = "bench_ledger"
    ledger = Table(
        "ledger", {"position": "integer", "account_id": "text", "amount": "integer"},
        key="position",
    )  # fmt: skip
    accounts = Table(
        "accounts", {"account_id": "text", "balance": "integer", "deposits": "integer"},
        key="account_id",
    )  # fmt: skip

    @handles(AccountOpened)
    async def opened(self, event: AccountOpened, ctx: Context) -> None:
        await ctx.execute(
            f"INSERT INTO {ctx.table(self.accounts)} (account_id, balance, deposits) "
            "VALUES ($1, 0, 0)",
            ctx.stream_id,
        )

    @handles(MoneyDeposited)
    async def deposited(self, event: MoneyDeposited, ctx: Context) -> None:
        await ctx.execute(
            f"INSERT INTO {ctx.table(self.ledger)} (position, account_id, amount) "
            "VALUES ($1, $2, $3)",
            ctx.position,
            ctx.stream_id,
            event.amount,
        )
        changed = await ctx.execute(
            f"UPDATE {ctx.table(self.accounts)} SET balance = balance + $1, "
            "deposits = deposits + 1 WHERE account_id = $2",
            event.amount,
            ctx.stream_id,
        )
        if changed != 1:  # a deposit before its opening: the partitioning broke order
            raise BenchError(f"no account {ctx.stream_id!r} to deposit into")


PROJECTIONS: Final[dict[str, type[Projection]]] = {"balances": Balances, "ledger": Ledger}
"""The projections a helper process can be asked to run, by short name."""


async def read_balances(read_store: ReadStore, table: Table) -> dict[str, int]:
    """``{account_id: balance}`` read through ``table``'s view (the live generation)."""
    rows = await read_store.query(
        f"SELECT account_id, balance FROM {read_store.qualified(table.name)}"
    )
    return {str(account): int(balance) for account, balance in rows}
