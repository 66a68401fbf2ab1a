"""Blue/green rebuilds: fill the next generation beside the live one, then switch.

A rebuild creates the projection's tables for generation ``live + 1`` without their
secondary indexes, applies the whole log into them in large pages (memory bounded by the
page, writes set-based), builds the indexes, and — in the transaction of the batch that
reaches the head — points the views at the new tables and makes the generation live.
Queries read the old tables until that commit and the new ones after it. The live runners
are fenced off by the switch (their generation is retired), pick up the new generation at
its checkpoint, and the old tables are dropped.

A rebuild that is interrupted resumes from its own checkpoint: it holds a lease like any
runner, so two rebuilds of one projection never write at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.errors import ObeliskError
from obelisk.projections.readstore import ProjectionState, ReadStore, ReadTransaction

if TYPE_CHECKING:
    from obelisk.projections.projection import Projection
    from obelisk.store.base import EventStore

__all__ = ["RebuildProgress", "ensure_current", "rebuild"]


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    """Where a rebuild is: for progress bars (``head`` is the log's head at the start)."""

    generation: int
    position: int
    head: int
    events: int
    seconds: float


class PartitionsChanged(ObeliskError):
    def __init__(self, name: str, stored: int, wanted: int) -> None:
        super().__init__(
            f"projection {name!r} runs with {stored} partitions; {wanted} were asked for. "
            "Run all workers with the same count (changing it needs a new projection name)."
        )


async def ensure_current(
    projection: Projection,
    store: EventStore,
    read_store: ReadStore,
    partitions: int,
    *,
    owner: str,
    lease_seconds: float,
) -> ProjectionState:
    """The projection's state once its live generation matches its code's version.

    First run: creates generation 1. A new ``version``: rebuilds (or, while another
    process is rebuilding, waits for it to switch).
    """
    cls = type(projection)
    state = await read_store.register(cls.name, cls.version, partitions, cls.tables)
    if state.partitions != partitions:
        raise PartitionsChanged(cls.name, state.partitions, partitions)
    if state.version == cls.version:
        return state
    if state.version > cls.version:
        raise ObeliskError(
            f"projection {cls.name!r} is live at version {state.version}; this code has "
            f"version {cls.version} (an older deployment?)"
        )
    await rebuild(
        projection, store, read_store, owner=owner, lease_seconds=max(lease_seconds, 30.0)
    )
    state = await read_store.register(cls.name, cls.version, partitions, cls.tables)
    return state


async def rebuild(
    projection: Projection,
    store: EventStore,
    read_store: ReadStore,
    *,
    page_size: int = 5000,
    owner: str | None = None,
    lease_seconds: float = 30.0,
    progress: Callable[[RebuildProgress], None] | None = None,
    partitions: int = 1,
) -> int:
    """Rebuild ``projection`` from the whole log into a new generation and switch to it.

    Waits (polling) while another process holds the rebuild's lease, and returns once the
    new generation is live. Returns the generation number. ``partitions`` is used only
    when the projection has never run (it then gets generation 1 first).
    """
    from obelisk.projections.runner import ProjectionBusy, ProjectionRunner

    cls = type(projection)
    if not cls.rebuildable:
        raise ObeliskError(
            f"{cls.__qualname__} is not rebuilt from the log: its handlers have effects "
            "outside its tables (scheduled commands) that a replay would repeat. Deploy a "
            "changed one under a new name instead of a new version."
        )
    state = await read_store.register(cls.name, cls.version, partitions, cls.tables)
    if state.version > cls.version:
        raise ObeliskError(
            f"projection {cls.name!r} is live at version {state.version}; refusing to "
            f"rebuild it with this code's older version {cls.version}"
        )
    generation = await read_store.begin_rebuild(cls.name, cls.tables)
    head = await store.last_position()
    started = time.perf_counter()
    # An owner of its own: the runners of one worker share the worker's id, and two of
    # them rebuilding under one name would take the lease from each other.
    rebuilder = f"{owner or 'rebuild'}:{uuid.uuid4().hex[:8]}"
    runner = ProjectionRunner(
        projection,
        store,
        read_store,
        page_size=page_size,
        lease_seconds=lease_seconds,
        owner=rebuilder,
    )
    runner.generation = generation
    if progress is not None:

        def report(done: ProjectionRunner) -> None:
            progress(
                RebuildProgress(
                    generation,
                    done.position,
                    head,
                    done.events_applied,
                    time.perf_counter() - started,
                )
            )

        runner.on_batch = report

    while True:
        try:
            # Bulk phase: no secondary indexes yet.
            await runner.run_until_caught_up()
            break
        except ProjectionBusy:
            current = await read_store.state(cls.name)
            if current is not None and current.building_generation is None:
                return current.live_generation  # the other process finished it
            await asyncio.sleep(min(1.0, lease_seconds / 3))
    await read_store.create_indexes(cls.tables, generation)
    retired = state.live_generation

    async def switch(tx: ReadTransaction, position: int) -> None:
        await read_store.switch(tx, cls.name, cls.version, cls.tables, generation, position)

    while True:
        # Between the phases the lease was free: another rebuilder may have finished the
        # build meanwhile (then this one must not touch the now-live generation).
        current = await read_store.state(cls.name)
        if current is None or current.building_generation != generation:
            return current.live_generation if current is not None else generation
        try:
            await runner.run_until_caught_up(on_caught_up=switch)
            break
        except ProjectionBusy:
            await asyncio.sleep(min(1.0, lease_seconds / 3))
    if retired != generation:
        await read_store.drop_generation(cls.name, cls.tables, retired)
    return generation
