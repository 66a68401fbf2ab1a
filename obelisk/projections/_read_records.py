"""The records a read store hands out about its projections: states, leases, dead letters
and checkpoints (see :mod:`obelisk.projections.readstore`)."""

from __future__ import annotations

import msgspec

__all__ = ["CheckpointRow", "Claim", "DeadLetter", "ProjectionState"]


class ProjectionState(msgspec.Struct, frozen=True):
    """A projection's row in the bookkeeping table."""

    name: str
    version: int
    live_generation: int
    building_generation: int | None
    partitions: int
    paused: bool


class Claim(msgspec.Struct, frozen=True):
    """A lease held on one partition of one generation: commits are fenced by ``epoch``."""

    name: str
    generation: int
    partition: int
    owner: str
    epoch: int
    position: int


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a projection skipped because its handler failed."""

    projection: str
    generation: int
    position: int
    stream_id: str
    version: int
    event_type: str
    error: str
    recorded_at: float


class CheckpointRow(msgspec.Struct, frozen=True):
    """One partition's checkpoint, as status tools show it."""

    name: str
    generation: int
    partition: int
    position: int
    owner: str | None
    lease_seconds_left: float | None
    last_event_at: float | None
    updated_at: float | None
