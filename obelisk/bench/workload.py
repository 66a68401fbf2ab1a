"""The workload port and the helpers every workload shares (sizes, amounts, folds)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgspec

from obelisk.application import Application
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import Sample, VerificationFailed
from obelisk.demo.bank import Account, AccountOpened, MoneyDeposited
from obelisk.store.base import EventStore
from obelisk.store.records import NO_STREAM, AppendRequest

__all__ = [
    "STREAM_TYPE",
    "AccountState",
    "Target",
    "Workload",
    "amount",
    "fold_balances",
    "open_accounts",
    "scaled",
]

STREAM_TYPE: Final = Account.aggregate_type


class AccountState(msgspec.Struct):
    """An Account's snapshot state as the raw baselines decode it (by hand, like a user
    of the bare driver would)."""

    owner: str
    balance: int


def scaled(full: int, scale: float, minimum: int) -> int:
    """``full`` times ``scale``, rounded, and never below ``minimum``."""
    return max(minimum, round(full * scale))


def amount(i: int) -> int:
    """The ``i``-th deposit amount of a plan.

    Deterministic and varied: a wrong fold or a lost deposit changes a balance.
    """
    return 1 + (i * 7) % 10


@dataclass(frozen=True, slots=True)
class Target:
    """What a workload aims for on one backend; a result meets it when it meets every part.

    Attributes:
        ratio: the least ``ratio_to_raw`` (obelisk speed / raw speed), or None.
        value: an absolute figure in the workload's unit (at least it for rates, at most
            it for times), or None. Used where the raw yardstick is not the goal itself,
            e.g. W6 on PostgreSQL, whose target is a command rate.
    """

    ratio: float | None = None
    value: float | None = None


class Workload(abc.ABC):
    """One benchmark workload at a given scale (1.0 = the documented sizes).

    Class attributes describe it for reports (``name``, ``title``, and ``baseline`` for
    what the raw driver does); ``unit`` and ``higher_is_better`` say how a run's value is
    computed; ``target_ratio`` (and ``target_value``) are what obelisk aims for unless
    :meth:`target` says otherwise for a backend. ``backends`` names the backends the
    workload can run on (None: all of them).
    """

    id: ClassVar[str]
    name: ClassVar[str]
    title: ClassVar[str]
    baseline: ClassVar[str]
    unit: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    target_ratio: ClassVar[float | None]
    target_value: ClassVar[float | None] = None
    backends: ClassVar[frozenset[str] | None] = None
    reports_group_commit: ClassVar[bool] = False
    # False runs obelisk with the aggregate cache off, for workloads that measure loading.
    aggregate_cache: ClassVar[bool] = True

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    @property
    @abc.abstractmethod
    def n(self) -> int:
        """The size reported with the results (commands, or events in the store)."""

    def target(self, backend: str) -> Target:
        """The target on ``backend`` (the class attributes unless a workload overrides it)."""
        return Target(self.target_ratio, self.target_value)

    def application_options(self) -> dict[str, Any]:
        """Keyword arguments for obelisk's Application (cache, snapshots)."""
        return {"cache_size": 10_000 if self.aggregate_cache else 0}

    def reference(self) -> Workload | None:
        """Another obelisk workload to run as this one's baseline, instead of the raw driver.

        For targets stated against obelisk itself (W2-cache against W1 of the same run):
        its obelisk side then fills the ``raw_*`` fields.
        """
        return None

    def skip_reason(self, backend: str) -> str | None:
        """Why this workload cannot run on ``backend``; None when it can."""
        if self.backends is None or backend in self.backends:
            return None
        return f"{self.id} runs only on {', '.join(sorted(self.backends))}"

    async def seed(self, store: EventStore) -> None:  # noqa: B027 - most workloads seed nothing
        """Write the untimed starting data (the store is open and empty)."""

    @abc.abstractmethod
    async def run_obelisk(self, app: Application) -> Sample:
        """Time obelisk's side on an open application, then verify it (untimed)."""

    @abc.abstractmethod
    async def run_raw(self, raw: RawBaseline, location: str) -> Sample:
        """Time the raw driver's side on the prepared database, then verify it."""

    def value(self, sample: Sample) -> float:
        """A run's figure in ``unit``: a rate per second, or milliseconds per unit of work."""
        if self.higher_is_better:
            return sample.work / sample.seconds
        return sample.seconds * 1000.0 / sample.work

    def _check(self, ok: bool, side: str, message: str) -> None:
        if not ok:
            raise VerificationFailed(f"{self.id} ({side}): {message}")


async def fold_balances(store: EventStore, page: int) -> tuple[dict[str, int], int]:
    """Read the whole log in pages of ``page`` and fold it into balances by stream.

    Returns the balances and the number of events read. Pages follow the last position
    read, never a count: positions need not be contiguous (they are not on PostgreSQL).
    """
    balances: dict[str, int] = {}
    after = 0
    read = 0
    while True:
        batch = await store.read_all(after=after, limit=page)
        for stored in batch:
            event = stored.event
            if type(event) is MoneyDeposited:
                balances[stored.stream_id] += event.amount
            else:
                balances[stored.stream_id] = 0
        read += len(batch)
        if len(batch) < page:
            return balances, read
        after = batch[-1].position


async def open_accounts(store: EventStore, account_ids: Sequence[str]) -> None:
    """Open every account in ``account_ids`` with one atomic multi-stream append.

    One append: seeding thousands of accounts costs one commit.
    """
    await store.append_many(
        [
            AppendRequest(aid, [AccountOpened(owner=f"owner-{aid}")], NO_STREAM, STREAM_TYPE)
            for aid in account_ids
        ]
    )
