"""The demo workload run by ``obelisk demo``: the bank domain, the run and its checks."""

from obelisk.demo.bank import (
    Account,
    AccountOpened,
    Deposit,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.demo.report import DemoReport
from obelisk.demo.run import run_demo
from obelisk.demo.verify import verify

__all__ = [
    "Account",
    "AccountOpened",
    "DemoReport",
    "Deposit",
    "MoneyDeposited",
    "OpenAccount",
    "register_bank_handlers",
    "run_demo",
    "verify",
]
