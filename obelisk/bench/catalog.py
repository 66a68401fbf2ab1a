"""Every benchmark workload by id, in report order: ``obelisk bench -w ID`` picks from here."""

from __future__ import annotations

from typing import Final

from obelisk.bench.inbox_workload import WorkerInbox
from obelisk.bench.lag_workload import ProjectionLag
from obelisk.bench.latency_workload import EndToEndLatency
from obelisk.bench.loading_workloads import (
    CachedUpdate,
    CacheHit,
    FastForwardUpdate,
    SnapshotBehindReplay,
    SnapshotReplay,
    SnapshottingUpdate,
)
from obelisk.bench.observed_workload import ObservedConcurrent
from obelisk.bench.projection_workloads import PartitionedProjection, ProjectionCatchUp
from obelisk.bench.rebuild_workload import ProjectionRebuild
from obelisk.bench.relay_workloads import RelayNats, RelayRedis
from obelisk.bench.workload import Workload
from obelisk.bench.workloads import CORE_WORKLOADS

__all__ = ["WORKLOADS"]

_ORDER: Final[tuple[type[Workload], ...]] = (
    *CORE_WORKLOADS,
    SnapshotReplay,
    SnapshotBehindReplay,
    CacheHit,
    CachedUpdate,
    SnapshottingUpdate,
    FastForwardUpdate,
    ObservedConcurrent,
    ProjectionCatchUp,
    PartitionedProjection,
    ProjectionRebuild,
    ProjectionLag,
    RelayRedis,
    RelayNats,
    EndToEndLatency,
    WorkerInbox,
)
WORKLOADS: Final[dict[str, type[Workload]]] = {cls.id: cls for cls in _ORDER}
"""Every workload by id, in report order."""
