"""Unit of work: load aggregates, run commands, commit everything atomically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypeVar
from uuid import UUID, uuid5

from obelisk.domain.aggregate import Aggregate
from obelisk.errors import AggregateNotFound, CommandRejected, ObeliskError, ValidationError
from obelisk.store.records import AppendRequest, AppendResult, validate_stream_id

# Event ids of idempotent commands: uuid5 in this namespace (fixed: stored ids depend on it).
_IDEMPOTENCY_NAMESPACE: Final = UUID("5b0e1c3a-7f0d-4b8e-9c1a-0b5e11e4a001")


def keyed_event_ids(key: str, start: int, count: int) -> list[UUID]:
    """The ids of events ``start .. start+count-1`` of the unit of work keyed ``key``.

    The same command handled again with the same key records the same ids, so the store
    recognises it (and the application can ask the store whether the key ran before).
    """
    return [uuid5(_IDEMPOTENCY_NAMESPACE, f"{key}\x1f{i}") for i in range(start, start + count)]


if TYPE_CHECKING:
    from obelisk.application.app import Application
    from obelisk.observability.observer import CommandTiming

__all__ = ["UnitOfWork"]

A = TypeVar("A", bound=Aggregate)


class UnitOfWork:
    """Tracks the aggregates of one command and commits their events in one append.

    Use as ``async with app.unit_of_work() as uow:``; leaving the block without an
    exception commits, leaving it with one discards every pending event. Each aggregate
    loaded through :meth:`get` is locked for this process until the unit ends, so
    commands on one aggregate never interleave. Get several aggregates in a consistent
    order (e.g. sorted ids) to avoid two units waiting on each other.
    """

    def __init__(
        self,
        app: Application,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self._app = app
        self.idempotency_key = idempotency_key
        self._tracked: dict[str, Aggregate] = {}
        self._locked: list[str] = []
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.position: int | None = None
        self._done = False
        self._in_flight: Awaitable[list[AppendResult]] | None = None
        self._timing: CommandTiming | None = None  # set by an observed Application.handle

    async def get(self, cls: type[A], aggregate_id: str) -> A:
        """Load ``aggregate_id`` (locked for this unit); AggregateNotFound if it has no events."""
        found = await self.get_or_none(cls, aggregate_id)
        if found is None:
            raise AggregateNotFound(cls.aggregate_type, aggregate_id)
        return found

    async def get_or_none(self, cls: type[A], aggregate_id: str) -> A | None:
        """Like :meth:`get`, but None when the aggregate does not exist."""
        self._check_active()
        if type(aggregate_id) is not str:  # an unhashable id would fail the lookups below
            validate_stream_id(aggregate_id)
        tracked = self._tracked.get(aggregate_id)
        if tracked is not None:
            if not isinstance(tracked, cls):
                raise CommandRejected(
                    f"{aggregate_id!r} is a {type(tracked).__name__} in this unit, "
                    f"not a {cls.__name__}"
                )
            return tracked
        app = self._app
        if aggregate_id not in self._locked:  # a missing aggregate may be asked for twice
            await app._locks.acquire(aggregate_id)
            self._locked.append(aggregate_id)
        # Under the lock, a cached instance is current for this process: no round trip.
        cached = app.cache.get(aggregate_id, cls)
        if cached is not None:
            if app.cache_mode == "fast-forward":
                await self._fast_forward(cached)
            self._tracked[aggregate_id] = cached
            return cached  # type: ignore[return-value]
        timing = self._timing
        if timing is None:
            aggregate = await app._load(cls, aggregate_id)
        else:
            aggregate = await self._timed_load(timing, cls, aggregate_id)
        if aggregate is not None:
            self._tracked[aggregate_id] = aggregate
            app.cache.put(aggregate)
        return aggregate

    async def _timed_load(self, timing: CommandTiming, cls: type[A], aggregate_id: str) -> A | None:
        started = time.perf_counter()
        try:
            if timing.tracer is None:
                return await self._app._load(cls, aggregate_id)
            with timing.tracer.start_as_current_span(
                "obelisk.load", attributes={"obelisk.aggregate_type": cls.aggregate_type}
            ):
                return await self._app._load(cls, aggregate_id)
        finally:
            timing.load_seconds += time.perf_counter() - started
            timing.loads += 1

    async def _fast_forward(self, cached: Aggregate) -> None:
        """Apply what other processes appended since ``cached`` was current."""
        cache = self._app.cache
        try:
            newer = await self._app.store.read_stream_events(
                cached.id, from_version=cached.version + 1
            )
            cached.replay(newer)
        except BaseException:
            cache.evict(cached.id)  # half-applied, or unknown: load afresh next time
            raise

    def add(self, aggregate: A) -> A:
        """Track a new aggregate (its first events are pending) for the commit."""
        self._check_active()
        if not isinstance(aggregate, Aggregate):
            raise ValidationError(f"expected an Aggregate, got {type(aggregate).__name__}")
        if type(aggregate.id) is not str:  # the rest of the id's rules: the store's, at commit
            validate_stream_id(aggregate.id)
        if aggregate.id in self._tracked and self._tracked[aggregate.id] is not aggregate:
            raise CommandRejected(f"{aggregate.id!r} is already tracked by this unit")
        self._tracked[aggregate.id] = aggregate
        return aggregate

    async def commit(self) -> int | None:
        """Append all pending events atomically; the last position, or None if nothing changed."""
        self._check_active()
        requests = []
        changed = []
        keyed = 0  # events of this unit so far: keyed ids number them across aggregates
        for aggregate in self._tracked.values():
            if aggregate._broken:
                raise CommandRejected(
                    f"{aggregate!r} raised in a command after recording events; "
                    "its state is half-changed and is not committed"
                )
            pending = aggregate._pending
            if pending:
                changed.append(aggregate)
                requests.append(
                    AppendRequest(
                        aggregate.id,
                        pending,  # taken over below, once the append succeeded
                        aggregate.version - len(pending),  # NO_STREAM (0) when new
                        aggregate.aggregate_type,
                        None
                        if self.idempotency_key is None
                        else keyed_event_ids(self.idempotency_key, keyed, len(pending)),
                        self.correlation_id,
                        self.causation_id,
                        None if self._timing is None else self._timing.traceparent,
                    )
                )
                keyed += len(pending)
        if not requests:
            return None
        append = self._app.store.append_many(requests)
        timing = self._timing
        try:
            if timing is None:
                results = await append
            elif timing.tracer is None:
                started = time.perf_counter()  # inline: no coroutine of its own per commit
                try:
                    results = await append
                finally:
                    timing.append_seconds += time.perf_counter() - started
                    timing.appends += 1
            else:
                results = await self._traced_append(timing, append, requests)
        except asyncio.CancelledError:
            # The store may still commit this append: _release keeps this unit's locks
            # until it settles (if the store can say when), so the next unit on these
            # aggregates cannot load a state without it. (Shielding the append instead
            # costs every commit an extra loop iteration: measured -10% on W1 and W6.)
            self._in_flight = append
            raise
        app = self._app
        cache = app.cache
        loading = app.loading
        if self.idempotency_key is not None:
            self._forget_replayed(changed, results)
        for aggregate in changed:
            aggregate._pending = []
            cache.put(aggregate)
            if loading.snapshots_on:
                loading.committed(aggregate)
        self.position = (
            results[0].last_position
            if len(results) == 1
            else max(result.last_position for result in results)
        )
        return self.position

    def _forget_replayed(self, changed: list[Aggregate], results: list[AppendResult]) -> None:
        """Drop aggregates whose append the store took as a retry of an earlier one: their
        in-memory state applied the events a second time (the store did not); the next
        load reads the truth."""
        cache = self._app.cache
        for aggregate, result in zip(list(changed), results, strict=True):
            if result.version != aggregate.version:
                changed.remove(aggregate)
                aggregate._pending = []
                cache.evict(aggregate.id)

    @staticmethod
    async def _traced_append(
        timing: CommandTiming,
        append: Awaitable[list[AppendResult]],
        requests: list[AppendRequest],
    ) -> list[AppendResult]:
        events = sum(len(request.events) for request in requests)
        started = time.perf_counter()
        try:
            with timing.tracer.start_as_current_span(
                "obelisk.append", attributes={"obelisk.events": events}
            ):
                return await append
        finally:
            timing.append_seconds += time.perf_counter() - started
            timing.appends += 1

    def _check_active(self) -> None:
        if self._done:
            raise ObeliskError("this unit of work has ended; start a new one")

    def _release(self, failed: bool = False) -> None:
        self._done = True
        cache = self._app.cache
        for aggregate in self._tracked.values():
            if failed or aggregate._pending or aggregate.is_broken:
                # Changed but not committed (an error, a conflict, a cancellation): the
                # instance is no longer what the store holds. And a unit that failed may
                # have been refused on a state another process has since changed: the
                # next attempt loads afresh, so it is refused at most once.
                cache.evict(aggregate.id)
        self._tracked.clear()
        keys, self._locked = self._locked, []
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and self._app.store.when_settled(
            in_flight, lambda: self._unlock(keys)
        ):
            return  # cancelled mid-append: unlocked once the append has settled
        self._unlock(keys)

    def _unlock(self, keys: list[str]) -> None:
        locks = self._app._locks
        for key in reversed(keys):
            locks.release(key)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = exc_type is not None
        try:
            if not failed:
                await self.commit()
        except BaseException:
            failed = True
            raise
        finally:
            self._release(failed)
