"""``obelisk demo``: many concurrent clients drive the bank, then every balance is checked.

The run has a plan made up front from a seeded RNG, so the final balance of every account
is known before the first command is sent. Clients are asyncio tasks sharing one
:class:`Application`; each works through its own share of the commands, one at a time,
as a real client waiting for its answer would. Deposits are shuffled before they are
dealt out, so one account's deposits come from several clients at once: the keyed lock
serialises them and the SQLite writer commits whatever is queued together (group commit).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

from rich.console import Console
from rich.text import Text

from obelisk.application import Application, Command
from obelisk.demo.bank import Deposit, OpenAccount, register_bank_handlers
from obelisk.demo.report import DemoProgress, DemoReport, RichProgress, print_report
from obelisk.demo.verify import Expected, Verification, check_store, verify
from obelisk.errors import ObeliskError
from obelisk.store.url import store_from_url

__all__ = [
    "DEFAULT_SEED",
    "DemoReport",
    "Expected",
    "Plan",
    "make_plan",
    "run_demo",
    "run_demo_cli",
    "verify",
]

DEFAULT_SEED = 1729
"""Seed of the amounts and of the order of deposits: two runs send the same commands."""

_MAX_AMOUNT = 1000
_T = TypeVar("_T")
_MAX_FAILURES_SHOWN = 5


@dataclass(frozen=True, slots=True)
class Plan:
    """Every command of a run, dealt out to clients, and the balances they must produce.

    Attributes:
        opens: per client, the OpenAccount commands it sends (phase one).
        deposits: per client, the Deposit commands it sends (phase two).
        balances: the final balance of every account.
    """

    opens: list[list[OpenAccount]]
    deposits: list[list[Deposit]]
    balances: dict[str, int]


def make_plan(
    *, clients: int, accounts: int, deposits: int, seed: int = DEFAULT_SEED, tag: str = "run"
) -> Plan:
    """The commands of a run; ``tag`` goes into account ids so runs never share a stream."""
    rng = random.Random(seed)
    ids = [f"demo-{tag}-{n:06d}" for n in range(accounts)]
    balances = dict.fromkeys(ids, 0)
    planned: list[Deposit] = []
    for account_id in ids:
        for _ in range(deposits):
            amount = rng.randint(1, _MAX_AMOUNT)
            balances[account_id] += amount
            planned.append(Deposit(account_id=account_id, amount=amount))
    # Shuffled, then dealt round-robin: an account's deposits end up spread over several
    # clients, which send them concurrently. Kept in account order, each account's
    # deposits would sit with one client and never contend for its lock.
    rng.shuffle(planned)
    opens = [OpenAccount(account_id=a, owner=f"owner {n}") for n, a in enumerate(ids)]
    return Plan(_deal(opens, clients), _deal(planned, clients), balances)


def _deal(items: Sequence[_T], clients: int) -> list[list[_T]]:
    return [list(items[k::clients]) for k in range(clients)]


class _Tally:
    """Latencies and failures shared by every client of a run (one event loop: no lock)."""

    def __init__(self, progress: DemoProgress | None) -> None:
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.failed = 0
        self.progress = progress


async def _client(app: Application, commands: Sequence[Command], tally: _Tally) -> None:
    clock = time.perf_counter
    latencies = tally.latencies_ms
    progress = tally.progress
    for cmd in commands:
        start = clock()
        try:
            await app.handle(cmd)
        except ObeliskError as exc:
            # Keep going: the planned balance still counts this command, so the
            # verification reports the damage instead of the run stopping at the first error.
            tally.failed += 1
            if len(tally.failures) < _MAX_FAILURES_SHOWN:
                tally.failures.append(f"{type(cmd).__name__} {cmd!r} failed: {exc}")
        latencies.append((clock() - start) * 1000.0)
        if progress is not None:
            progress.advance()


async def _phase(
    app: Application, shares: Sequence[Sequence[Command]], name: str, tally: _Tally
) -> None:
    if tally.progress is not None:
        tally.progress.phase(name, sum(len(share) for share in shares))
    async with asyncio.TaskGroup() as group:
        for share in shares:
            if share:
                group.create_task(_client(app, share, tally))


async def run_demo(
    *,
    clients: int = 64,
    accounts: int = 2000,
    deposits: int = 10,
    store_url: str | None = None,
    seed: int = DEFAULT_SEED,
    progress: DemoProgress | None = None,
) -> DemoReport:
    """Run the bank workload and verify the store; see ``docs/demo.md``.

    Args:
        clients: concurrent clients (asyncio tasks).
        accounts: accounts opened, one OpenAccount command each.
        deposits: deposits per account.
        store_url: where to write; by default a SQLite file in a temporary folder that is
            removed when the run ends.
        seed: seed of the amounts and of the order of the deposits.
        progress: told about each phase and each finished command.

    Raises:
        ValueError: a size is out of range or the store URL is malformed.
    """
    if clients < 1 or accounts < 1 or deposits < 0:
        raise ValueError("need clients >= 1, accounts >= 1 and deposits >= 0")
    sizes = {"clients": clients, "accounts": accounts, "deposits": deposits, "seed": seed}
    if store_url is not None:
        return await _run(store_url, False, progress, **sizes)
    with tempfile.TemporaryDirectory(prefix="obelisk-demo-") as folder:
        # mkdtemp returns an absolute path, so the URL takes the sqlite://// form.
        url = "sqlite:///" + quote(f"{folder}/demo.db")
        return await _run(url, True, progress, **sizes)


async def _run(
    url: str,
    temporary: bool,
    progress: DemoProgress | None,
    *,
    clients: int,
    accounts: int,
    deposits: int,
    seed: int,
) -> DemoReport:
    app = register_bank_handlers(Application(store=url))
    async with app:
        # The store may already hold events (a --store given twice): the run's events
        # are the ones after this position, and its account ids carry a fresh tag.
        after = await app.store.last_position()
        tag = secrets.token_hex(4)
        plan = make_plan(clients=clients, accounts=accounts, deposits=deposits, seed=seed, tag=tag)
        tally = _Tally(progress)
        started = time.perf_counter()
        # Accounts first: a deposit into an account not yet opened would be rejected.
        await _phase(app, plan.opens, "opening accounts", tally)
        await _phase(app, plan.deposits, "depositing", tally)
        seconds = time.perf_counter() - started
        events = await app.store.last_position() - after
        expected = Expected(plan.balances, deposits, after)
        checked_at = time.perf_counter()
        verification = await check_store(app, expected)
        verify_seconds = time.perf_counter() - checked_at
    return DemoReport(
        store=url,
        temporary=temporary,
        clients=clients,
        accounts=accounts,
        deposits=deposits,
        commands=len(tally.latencies_ms),
        failed=tally.failed,
        seconds=seconds,
        latencies_ms=tally.latencies_ms,
        events=events,
        accounts_verified=verification.accounts_verified,
        mismatches=_with_failures(verification, tally),
        verify_seconds=verify_seconds,
        expected=expected,
    )


def _with_failures(verification: Verification, tally: _Tally) -> list[str]:
    if not tally.failed:
        return verification.mismatches
    noun = "command" if tally.failed == 1 else "commands"
    lines = [f"{tally.failed} {noun} failed", *tally.failures]
    return lines + verification.mismatches


def run_demo_cli(
    *,
    clients: int = 64,
    accounts: int = 2000,
    deposits: int = 10,
    store_url: str | None = None,
    json_output: bool = False,
) -> int:
    """``obelisk demo``: run, print a table (or JSON) and return the exit code.

    Returns:
        0 when the store passed verification, 1 when it did not, 2 when the run could
        not start (bad sizes, bad store URL, store unavailable).
    """
    err = Console(stderr=True, soft_wrap=True)
    problem = _usage_problem(clients, accounts, deposits, store_url)
    if problem is not None:
        err.print(Text(f"obelisk demo: {problem}", style="red"))
        return 2
    try:
        with RichProgress(enabled=not json_output) as progress:
            report = asyncio.run(
                run_demo(
                    clients=clients,
                    accounts=accounts,
                    deposits=deposits,
                    store_url=store_url,
                    progress=progress,
                )
            )
    except ObeliskError as exc:
        err.print(Text(f"obelisk demo: {type(exc).__name__}: {exc}", style="red"))
        return 2
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        print_report(report, Console())
    return 0 if report.verified else 1


def _usage_problem(clients: int, accounts: int, deposits: int, store_url: str | None) -> str | None:
    if clients < 1:
        return "--clients must be at least 1"
    if accounts < 1:
        return "--accounts must be at least 1"
    if deposits < 0:
        return "--deposits must not be negative"
    if store_url is not None:
        try:
            # Building an adapter does no I/O: this only parses the URL, so a typo is
            # reported before anything runs.
            store_from_url(store_url)
        except ValueError as exc:
            return str(exc)
    return None
