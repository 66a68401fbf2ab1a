"""Checking a demo run against what its plan says the store must now hold.

Three independent readings of the store must agree with the plan: every account loaded
through the application (the aggregate path), the store's position counter (the event
count), and one paged pass over the global log folded by hand (the projection path). A
bug in any one of them — a lost or doubled append, a skipped position, an aggregate
rebuilt from the wrong events — shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from obelisk.application import Application
from obelisk.demo.bank import Account, AccountOpened, MoneyDeposited
from obelisk.errors import ObeliskError

__all__ = ["Expected", "MAX_MISMATCHES", "Verification", "check_store", "verify"]

MAX_MISMATCHES = 20
"""Mismatches listed one by one; further ones are summed up in one last line."""

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Expected:
    """What the store must hold after a run.

    Attributes:
        balances: the final balance of every account the run opened, by account id.
        deposits: deposits made into each account.
        after: the store's last position before the run; the run's events follow it.
    """

    balances: Mapping[str, int]
    deposits: int
    after: int = 0

    @property
    def events(self) -> int:
        """Events the run appends: one AccountOpened and ``deposits`` deposits per account."""
        return len(self.balances) * (1 + self.deposits)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of :func:`check_store`.

    Attributes:
        mismatches: one line per disagreement (the first ``MAX_MISMATCHES``, then a count).
        accounts_verified: accounts that passed every per-account check.
    """

    mismatches: list[str]
    accounts_verified: int

    @property
    def ok(self) -> bool:
        """Whether the store agreed with the plan on every check."""
        return not self.mismatches


@dataclass(slots=True)
class _Mismatches:
    """Collects mismatch lines, keeping the first few and counting the rest."""

    lines: list[str] = field(default_factory=list)
    dropped: int = 0
    bad_accounts: set[str] = field(default_factory=set)

    def add(self, line: str, account_id: str | None = None) -> None:
        if account_id is not None:
            self.bad_accounts.add(account_id)
        if len(self.lines) < MAX_MISMATCHES:
            self.lines.append(line)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.lines, f"... and {self.dropped} more mismatches"]
        return list(self.lines)


async def verify(app: Application, expected: Expected) -> list[str]:
    """Compare the store behind ``app`` with ``expected``; one line per mismatch.

    Args:
        app: an open application over the store the run wrote to.
        expected: the run's plan (balances, deposits per account, starting position).

    Returns:
        An empty list when the store agrees with the plan on every check.
    """
    return (await check_store(app, expected)).mismatches


async def check_store(app: Application, expected: Expected) -> Verification:
    """Like :func:`verify`, also counting the accounts that passed every check."""
    found = _Mismatches()
    # Whole-store checks first: they sum up the damage in a line or two, and the
    # per-account lines after them can fill the list to its limit.
    await _check_count(app, expected, found)
    fold = await _fold_log(app, expected, found)
    await _check_aggregates(app, expected, found)
    _check_fold(fold, expected, found)
    verified = len(expected.balances) - len(found.bad_accounts & expected.balances.keys())
    return Verification(found.result(), verified)


async def _check_aggregates(app: Application, expected: Expected, found: _Mismatches) -> None:
    versions = 1 + expected.deposits
    for account_id, balance in expected.balances.items():
        try:
            account = await app.get(Account, account_id)
        except ObeliskError as exc:
            found.add(f"account {account_id}: cannot load: {exc}", account_id)
            continue
        if account.balance != balance:
            found.add(
                f"account {account_id}: balance {account.balance}, expected {balance}", account_id
            )
        if account.version != versions:
            found.add(
                f"account {account_id}: version {account.version}, expected {versions}", account_id
            )


async def _check_count(app: Application, expected: Expected, found: _Mismatches) -> None:
    stored = await app.store.last_position() - expected.after
    if stored != expected.events:
        found.add(f"store holds {stored} new events, expected {expected.events}")


@dataclass(slots=True)
class _Fold:
    """Per-account totals folded from the global log."""

    opened: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


async def _fold_log(app: Application, expected: Expected, found: _Mismatches) -> _Fold:
    """Fold the run's part of the global log page by page, as a projection would."""
    fold = _Fold()
    opened, totals, counts = fold.opened, fold.totals, fold.counts
    last = expected.after
    seen = 0
    while True:
        page = await app.store.read_all(after=last, limit=_PAGE)
        if not page:
            break
        for stored in page:
            # Positions are promised gap-free: a hole means an event was lost or hidden.
            if stored.position != last + 1:
                found.add(f"log: position {stored.position} follows {last}")
            last = stored.position
            seen += 1
            stream = stored.stream_id
            if stream not in expected.balances:
                found.add(f"log: position {stored.position} is in unexpected stream {stream}")
                continue
            event = stored.event
            if isinstance(event, AccountOpened):
                opened[stream] = opened.get(stream, 0) + 1
            elif isinstance(event, MoneyDeposited):
                totals[stream] = totals.get(stream, 0) + event.amount
                counts[stream] = counts.get(stream, 0) + 1
            else:
                found.add(f"log: position {stored.position} holds a {event.event_type}", stream)
    if seen != expected.events:
        found.add(f"log: read_all returned {seen} events, expected {expected.events}")
    return fold


def _check_fold(fold: _Fold, expected: Expected, found: _Mismatches) -> None:
    for account_id, balance in expected.balances.items():
        opened = fold.opened.get(account_id, 0)
        if opened != 1:
            found.add(f"log: account {account_id} opened {opened} times", account_id)
        count = fold.counts.get(account_id, 0)
        if count != expected.deposits:
            found.add(
                f"log: account {account_id} has {count} deposits, expected {expected.deposits}",
                account_id,
            )
        total = fold.totals.get(account_id, 0)
        if total != balance:
            found.add(
                f"log: account {account_id} deposits sum to {total}, expected {balance}",
                account_id,
            )
