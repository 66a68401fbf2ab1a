"""Partitioned projection workers: N processes share a projection's partitions.

Each worker notes itself alive in the workers table, owns about ``partitions / workers``
partitions (its fair share), and runs one :class:`ProjectionRunner` per owned partition.
A worker that dies stops renewing its leases; after ``lease_seconds`` the others see fewer
live workers, their fair share grows, and they claim the orphaned partitions from their
checkpoints. A worker that holds more than its share (a new worker joined) stops the
extra runners, which release their leases for the newcomer.

Per-stream order holds because a stream always hashes to the same partition, and a
partition has one owner at a time (the lease fences every commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from obelisk.errors import StoreError, StoreUnavailable, ValidationError
from obelisk.projections.rebuild import ensure_current
from obelisk.projections.runner import OnError, ProjectionRunner, fair_share

if TYPE_CHECKING:
    from obelisk.projections.projection import Projection
    from obelisk.projections.readstore import ReadStore
    from obelisk.store.base import EventStore

__all__ = ["ProjectionWorker"]

_log = logging.getLogger("obelisk.projections.worker")


class ProjectionWorker:
    """One process's share of a partitioned projection.

    Args:
        projection / store / read_store: as for :class:`ProjectionRunner`.
        partitions: how many partitions the projection has (fixed at its first run).
        worker_id: this worker's name in the workers table (a fresh one by default).
        lease_seconds: lease and liveness period; a dead worker's partitions move after
            about this long.
        max_partitions: never own more than this many (None: the fair share).
    """

    def __init__(
        self,
        projection: Projection,
        store: EventStore,
        read_store: ReadStore,
        *,
        partitions: int,
        worker_id: str | None = None,
        page_size: int = 1000,
        on_error: OnError = "stop",
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        max_partitions: int | None = None,
    ) -> None:
        if partitions < 1:
            raise ValidationError(f"partitions must be >= 1, got {partitions}")
        self.projection = projection
        self.name = type(projection).name
        self.store = store
        self.read_store = read_store
        self.partitions = partitions
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.page_size = page_size
        self.on_error: OnError = on_error
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.max_partitions = max_partitions
        self.runners: dict[int, ProjectionRunner] = {}
        self._tasks: dict[int, asyncio.Task[bool]] = {}
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def owned(self) -> list[int]:
        """The partitions this worker runs now."""
        return sorted(p for p, task in self._tasks.items() if not task.done())

    def stop(self) -> None:
        """Stop every runner after its current batch (leases are released)."""
        self._stopping = True
        self._wake.set()
        for runner in self.runners.values():
            runner.stop()

    async def run(self) -> None:
        """Balance and run partitions until :meth:`stop`; a runner's ProjectionError
        (a poison event under the ``stop`` policy) stops the worker and is raised."""
        try:
            while not self._stopping:
                try:
                    await self._balance()
                except StoreUnavailable as exc:  # passes; anything else stops the worker
                    _log.warning("projection worker %s: %s", self.worker_id, exc)
                try:
                    async with asyncio.timeout(self.lease_seconds / 3):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for runner in self.runners.values():
                runner.stop()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            with contextlib.suppress(StoreError):
                await self.read_store.leave(self.name, self.worker_id)

    async def _balance(self) -> None:
        for partition, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[partition]
                self.runners.pop(partition, None)
                error = task.exception() if not task.cancelled() else None
                if error is not None and not isinstance(error, StoreUnavailable):
                    # A poison event, a corrupt row: the same partition would fail again.
                    self._stopping = True
                    raise error
        state = await ensure_current(
            self.projection,
            self.store,
            self.read_store,
            self.partitions,
            owner=self.worker_id,
            lease_seconds=self.lease_seconds,
        )
        workers = await self.read_store.heartbeat(self.name, self.worker_id, self.lease_seconds)
        if state.paused:
            # Paused: every commit would be fenced off; hold nothing and wait for resume.
            for runner in self.runners.values():
                runner.stop()
            return
        share = fair_share(self.partitions, workers)
        if self.max_partitions is not None:
            share = min(share, self.max_partitions)
        owned = self.owned
        for partition in owned[share:]:  # a newcomer: hand the extra ones back
            self.runners[partition].stop()
        if len(owned) >= share:
            return
        for partition in range(self.partitions):
            if len(self.owned) >= share:
                break
            if partition in self._tasks:
                continue
            claim = await self.read_store.claim(
                self.name, state.live_generation, partition, self.worker_id, self.lease_seconds
            )
            if claim is None:
                continue
            runner = ProjectionRunner(
                self.projection,
                self.store,
                self.read_store,
                partition=partition,
                partitions=self.partitions,
                page_size=self.page_size,
                on_error=self.on_error,
                lease_seconds=self.lease_seconds,
                poll_interval=self.poll_interval,
                owner=self.worker_id,
            )
            self.runners[partition] = runner
            self._tasks[partition] = asyncio.create_task(
                runner.serve(claim), name=f"{self.name}[{partition}]"
            )
