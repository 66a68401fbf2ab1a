"""Loading aggregates: from the newest snapshot plus the events after it, measured.

Every load is timed and counted per aggregate type (:class:`LoadStats`), checked against
the type's :class:`LoadBudget`, and may ask the snapshotter for a snapshot when the type's
:class:`SnapshotPolicy` says one is due. A snapshot that cannot be used — another aggregate
type or state schema, undecodable bytes, or a version past the stream's head (a restored
backup) — is ignored with a warning and the aggregate is replayed from its first event:
a snapshot can make a load shorter, never wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from obelisk.domain.aggregate import Aggregate
from obelisk.domain.state import StateError, state_codec
from obelisk.store.base import EventStore
from obelisk.store.records import Snapshot

if TYPE_CHECKING:
    from obelisk.application.snapshots import Snapshotter
    from obelisk.observability.metrics import Metrics

__all__ = ["AggregateLoader", "LoadBudget", "LoadStats", "SnapshotPolicy"]

_log = logging.getLogger("obelisk.loading")

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to snapshot an aggregate type; snapshots are always taken in the background.

    Attributes:
        every: snapshot once this many events were committed since the last snapshot
            (None: not by count).
        load_seconds: snapshot an aggregate whose load took longer than this (None: not
            by cost).
    """

    every: int | None = 100
    load_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.every is not None and (type(self.every) is not int or self.every < 1):
            raise ValueError(f"every must be an int >= 1 or None, got {self.every!r}")
        if self.load_seconds is not None and not self.load_seconds > 0:
            raise ValueError(f"load_seconds must be > 0 or None, got {self.load_seconds!r}")
        if self.every is None and self.load_seconds is None:
            raise ValueError("a snapshot policy needs `every`, `load_seconds` or both")


@dataclass(frozen=True, slots=True)
class LoadBudget:
    """How big an aggregate may grow before its loads are reported.

    Attributes:
        max_events: the most events a load may replay (after its snapshot, if any).
        max_seconds: the longest a load may take.
    """

    max_events: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        events = self.max_events
        if events is not None and (type(events) is not int or events < 0):
            raise ValueError(f"max_events must be an int >= 0 or None, got {self.max_events!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds!r}")


@dataclass(slots=True)
class LoadStats:
    """What loading one aggregate type has cost so far (read by metrics and tools)."""

    loads: int = 0
    events_replayed: int = 0
    seconds: float = 0.0
    snapshot_hits: int = 0
    snapshots_ignored: int = 0
    over_budget: int = 0
    slowest_seconds: float = 0.0
    slowest_id: str | None = None
    ignored_reasons: dict[str, int] = field(default_factory=dict)

    def _record(self, aggregate_id: str, replayed: int, seconds: float) -> None:
        self.loads += 1
        self.events_replayed += replayed
        self.seconds += seconds
        if seconds > self.slowest_seconds:
            self.slowest_seconds, self.slowest_id = seconds, aggregate_id


class AggregateLoader:
    """Loads aggregates for one application (see the module notes)."""

    def __init__(
        self,
        store: Callable[[], EventStore],
        snapshotter: Snapshotter,
        *,
        snapshot_policy: SnapshotPolicy | None,
        budget: LoadBudget | None,
    ) -> None:
        self._store = store
        self._snapshotter = snapshotter
        self.default_policy = snapshot_policy
        self.default_budget = budget
        self._policies: dict[type[Aggregate], SnapshotPolicy | None] = {}
        self._budgets: dict[type[Aggregate], LoadBudget | None] = {}
        self.stats: dict[str, LoadStats] = {}
        self.metrics: Metrics | None = None  # set by an Application with an Observer
        # Whether any type may be snapshotted: when not, commits skip the check entirely.
        self.snapshots_on = snapshot_policy is not None

    # -- configuration -------------------------------------------------------------------

    def configure(
        self,
        cls: type[Aggregate],
        *,
        snapshots: SnapshotPolicy | None,
        budget: LoadBudget | None,
    ) -> None:
        if snapshots is not None:
            state_codec(cls)  # fail now, not at the first snapshot, if it cannot be encoded
        self._policies[cls] = snapshots
        self._budgets[cls] = budget
        self.snapshots_on = self.default_policy is not None or any(
            policy is not None for policy in self._policies.values()
        )

    def policy(self, cls: type[Aggregate]) -> SnapshotPolicy | None:
        """The snapshot policy of ``cls`` (its own, else the application's default)."""
        try:
            return self._policies[cls]
        except KeyError:
            policy = self.default_policy
            if policy is not None:
                try:
                    state_codec(cls)
                except StateError as exc:
                    _log.warning("snapshots are off for %s: %s", cls.__qualname__, exc)
                    policy = None
            self._policies[cls] = policy
            return policy

    def budget(self, cls: type[Aggregate]) -> LoadBudget | None:
        try:
            return self._budgets[cls]
        except KeyError:
            return self.default_budget

    def stats_for(self, cls: type[Aggregate]) -> LoadStats:
        stats = self.stats.get(cls.aggregate_type)
        if stats is None:
            stats = self.stats[cls.aggregate_type] = LoadStats()
        return stats

    # -- after a commit ------------------------------------------------------------------

    def committed(self, aggregate: Aggregate) -> None:
        """Ask for a snapshot of ``aggregate`` if its type's policy says one is due."""
        policy = self.policy(type(aggregate))
        if (
            policy is not None
            and policy.every is not None
            and aggregate.version - aggregate._snapshot_version >= policy.every
        ):
            self._snapshotter.request(aggregate)

    # -- loading -------------------------------------------------------------------------

    async def load(self, cls: type[A], aggregate_id: str, version: int | None = None) -> A | None:
        """The aggregate at its head (or at ``version``), or None when it has no events."""
        started = time.perf_counter()
        store = self._store()
        policy = self.policy(cls)
        aggregate: A | None = None
        replayed = 0
        if policy is not None and version is None:
            # The common load: snapshot and events after it, one round trip where it can.
            snapshot, events = await store.load_from_snapshot(aggregate_id)
            if snapshot is None:
                if not events:
                    return None
                aggregate = cls.rebuild(aggregate_id, events)
                replayed = len(events)
            else:
                aggregate = self._decode(cls, snapshot)
                if aggregate is not None and events:
                    aggregate.replay(events[1:])
                    aggregate._snapshot_version = snapshot.version
                    replayed = len(events) - 1
                    self.stats_for(cls).snapshot_hits += 1
                elif aggregate is not None:
                    self._ignored(cls, snapshot, "past the stream's head")
                    await self._forget(store, snapshot)
                    aggregate = None
        elif policy is not None and version is not None:
            # As of a version: a snapshot at or below it, and the events up to it.
            snapshot = await store.load_snapshot(aggregate_id)
            if snapshot is not None and snapshot.version <= version:
                aggregate = self._decode(cls, snapshot)
            if aggregate is not None:
                assert snapshot is not None
                events = await store.read_stream_events(
                    aggregate_id, from_version=snapshot.version, to_version=version
                )
                if events:
                    aggregate.replay(events[1:])
                    aggregate._snapshot_version = snapshot.version
                    replayed = len(events) - 1
                    self.stats_for(cls).snapshot_hits += 1
                else:
                    aggregate = None  # past the head: the full read below decides
        if aggregate is None:
            events = await store.read_stream_events(aggregate_id, to_version=version)
            if not events:
                return None
            aggregate = cls.rebuild(aggregate_id, events)
            replayed = len(events)
        seconds = time.perf_counter() - started
        self._measured(cls, aggregate, replayed, seconds)
        if version is None and policy is not None and self._due(policy, aggregate, seconds):
            self._snapshotter.request(aggregate)
        return aggregate

    def _decode(self, cls: type[A], snapshot: Snapshot) -> A | None:
        if snapshot.aggregate_type != cls.aggregate_type:
            self._ignored(cls, snapshot, f"it is of type {snapshot.aggregate_type!r}")
            return None
        if snapshot.schema_version != cls.state_version:
            self._ignored(
                cls, snapshot, f"its state version is {snapshot.schema_version}, "
                f"the class's {cls.state_version}",
            )  # fmt: skip
            return None
        try:
            decoded = state_codec(cls).decode(snapshot.stream_id, snapshot.version, snapshot.state)
        except StateError as exc:
            self._ignored(cls, snapshot, f"it cannot be decoded: {exc}")
            return None
        assert isinstance(decoded, cls)
        return decoded

    def _ignored(self, cls: type[Aggregate], snapshot: Snapshot, why: str) -> None:
        stats = self.stats_for(cls)
        stats.snapshots_ignored += 1
        reason = why.split(":")[0]
        stats.ignored_reasons[reason] = stats.ignored_reasons.get(reason, 0) + 1
        _log.warning(
            "snapshot of %r at version %d ignored (%s); replaying its events instead",
            snapshot.stream_id, snapshot.version, why,
            extra={"aggregate_type": cls.aggregate_type, "aggregate_id": snapshot.stream_id,
                   "snapshot_version": snapshot.version},
        )  # fmt: skip

    async def _forget(self, store: EventStore, snapshot: Snapshot) -> None:
        # A snapshot past the head would block every newer one (the newest wins): drop it.
        try:
            await store.delete_snapshot(snapshot.stream_id, snapshot.version)
        except Exception as exc:  # the load itself is fine: only log
            _log.warning(
                "could not delete the unusable snapshot of %r: %s", snapshot.stream_id, exc
            )

    def _measured(
        self, cls: type[Aggregate], aggregate: Aggregate, replayed: int, seconds: float
    ) -> None:
        stats = self.stats_for(cls)
        stats._record(aggregate.id, replayed, seconds)
        metrics = self.metrics
        if metrics is not None:
            metrics.loads.child(cls.aggregate_type).observe(seconds)
            metrics.replayed.child(cls.aggregate_type).observe(replayed)
        budget = self.budget(cls)
        if budget is None:
            return
        too_many = budget.max_events is not None and replayed > budget.max_events
        too_slow = budget.max_seconds is not None and seconds > budget.max_seconds
        if too_many or too_slow:
            stats.over_budget += 1
            budget_ms = None if budget.max_seconds is None else budget.max_seconds * 1000
            _log.warning(
                "%s %r is over its load budget: %d events replayed in %.1f ms "
                "(budget: %s events, %s ms); snapshot it more often or split it",
                cls.aggregate_type, aggregate.id, replayed, seconds * 1000,
                budget.max_events, budget_ms,
                extra={"aggregate_type": cls.aggregate_type, "aggregate_id": aggregate.id,
                       "events_replayed": replayed, "load_seconds": seconds,
                       "version": aggregate.version},
            )  # fmt: skip

    @staticmethod
    def _due(policy: SnapshotPolicy, aggregate: Aggregate, seconds: float) -> bool:
        if policy.load_seconds is not None and seconds > policy.load_seconds:
            return True
        every = policy.every
        return every is not None and aggregate.version - aggregate._snapshot_version >= every
