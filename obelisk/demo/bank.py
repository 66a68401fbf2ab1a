"""A small bank: the domain that ``obelisk demo`` and ``obelisk bench`` drive."""

from __future__ import annotations

from typing import Annotated

import msgspec

from obelisk.application import Application, Command, UnitOfWork
from obelisk.domain import Aggregate, Event, command
from obelisk.errors import DomainError

__all__ = [
    "Account",
    "AccountOpened",
    "Deposit",
    "MoneyDeposited",
    "OpenAccount",
    "register_bank_handlers",
]

PositiveAmount = Annotated[int, msgspec.Meta(gt=0)]


class AccountOpened(Event):
    event_type = "bank.AccountOpened"
    owner: str


class MoneyDeposited(Event):
    event_type = "bank.MoneyDeposited"
    amount: int


class Account(Aggregate):
    """A bank account: opened once, then deposited into."""

    owner: str = ""
    balance: int = 0

    @classmethod
    def open(cls, account_id: str, owner: str) -> Account:
        return cls.create(account_id, AccountOpened(owner=owner))

    @command
    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise DomainError("a deposit must be positive")
        self.record(MoneyDeposited(amount=amount))

    def apply_opened(self, event: AccountOpened) -> None:
        self.owner = event.owner

    def apply_deposited(self, event: MoneyDeposited) -> None:
        self.balance += event.amount


class OpenAccount(Command):
    account_id: str
    owner: str


class Deposit(Command):
    account_id: str
    amount: PositiveAmount


async def _open_account(uow: UnitOfWork, cmd: OpenAccount) -> None:
    uow.add(Account.open(cmd.account_id, cmd.owner))


async def _deposit(uow: UnitOfWork, cmd: Deposit) -> None:
    account = await uow.get(Account, cmd.account_id)
    account.deposit(cmd.amount)


def register_bank_handlers(app: Application) -> Application:
    """Register the bank's command handlers on ``app`` and return it."""
    app.commands.register(OpenAccount, _open_account)
    app.commands.register(Deposit, _deposit)
    return app
