"""Application: wires an event store, the command handlers and the unit of work."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from obelisk.application._inputs import check_as_of, check_ids, check_version
from obelisk.application.cache import AggregateCache
from obelisk.application.commands import Command, CommandRegistry, Handler
from obelisk.application.loading import AggregateLoader, LoadBudget, SnapshotPolicy
from obelisk.application.locks import KeyedLock
from obelisk.application.retry import NO_RETRY, RetryPolicy
from obelisk.application.snapshots import Snapshotter
from obelisk.application.unit_of_work import UnitOfWork, keyed_event_ids
from obelisk.domain.aggregate import Aggregate
from obelisk.errors import (
    AggregateNotFound,
    ConcurrencyError,
    DomainError,
    UsageError,
    ValidationError,
)
from obelisk.observability.observer import CommandTiming
from obelisk.store.base import EventStore
from obelisk.store.records import validate_stream_id
from obelisk.store.url import store_from_url

if TYPE_CHECKING:
    from obelisk.messaging.jobs import Job, JobQueue
    from obelisk.observability.observer import Observer

__all__ = ["Application"]

A = TypeVar("A", bound=Aggregate)
CacheMode = Literal["trust", "fast-forward"]
_log = logging.getLogger("obelisk.application")
KEY_LOOKUP_EVENTS = 32  # events of an earlier keyed command looked up for its position
C = TypeVar("C", bound=Command)


class Application:
    """The command side of an obelisk service.

    Args:
        store: an :class:`EventStore`, or a URL (``sqlite:///app.db``, ``memory://``).
            The store is built when the application opens, never at import time.
        retry: the default policy for handlers registered without one; by default a
            ConcurrencyError reaches the caller (no retry).
        cache_size: how many aggregates the unit-of-work cache keeps (0 disables it).
        cache_bytes: optionally, about how many bytes the cached aggregates may take.
        cache_mode: ``"trust"`` (default): a cached aggregate is current, a hit costs no
            I/O; another process's write is caught by the append's version check.
            ``"fast-forward"``: a hit first reads the events newer than the cached version
            (one short read), for deployments where several processes write the same
            aggregates often.
        snapshots: the snapshot policy of every aggregate type (None: no snapshots);
            :meth:`configure` sets one type's.
        load_budget: the load budget of every aggregate type (None: none).
        observer: metrics, traces and the slow-command log
            (:class:`~obelisk.observability.Observer`; None: nothing is measured).
        jobs: the queue :meth:`enqueue` puts background jobs on
            (:class:`~obelisk.messaging.jobs.JobQueue`).
    """

    def __init__(
        self,
        store: str | EventStore = "memory://",
        *,
        retry: RetryPolicy | None = None,
        cache_size: int = 10_000,
        cache_bytes: int | None = None,
        cache_mode: CacheMode = "trust",
        snapshots: SnapshotPolicy | None = None,
        load_budget: LoadBudget | None = None,
        observer: Observer | None = None,
        jobs: JobQueue | None = None,
    ):
        if cache_mode not in ("trust", "fast-forward"):
            raise ValidationError(
                f"cache_mode must be 'trust' or 'fast-forward', got {cache_mode!r}"
            )
        self._store_spec = store
        self._store: EventStore | None = store if isinstance(store, EventStore) else None
        self.retry = retry if retry is not None else NO_RETRY
        self.commands = CommandRegistry()
        self._locks = KeyedLock()
        self.cache = AggregateCache(cache_size, max_bytes=cache_bytes)
        self.cache_mode: CacheMode = cache_mode
        self.snapshotter = Snapshotter(lambda: self.store)
        self.loading = AggregateLoader(
            lambda: self.store, self.snapshotter, snapshot_policy=snapshots, budget=load_budget
        )
        self.observer = observer
        self.jobs = jobs
        if observer is not None and observer.metrics is not None:
            observer.metrics.attach(self)
            self.loading.metrics = observer.metrics
        self._open = False

    def configure(
        self,
        cls: type[Aggregate],
        *,
        snapshots: SnapshotPolicy | None,
        budget: LoadBudget | None = None,
    ) -> None:
        """Set the snapshot policy and load budget of one aggregate type.

        Raises:
            StateError: ``snapshots`` is set and the class's state cannot be encoded.
        """
        self.loading.configure(cls, snapshots=snapshots, budget=budget)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        """The event store (available once the application is open)."""
        if self._store is None:
            raise UsageError("the application is not open: use `async with app:`")
        return self._store

    async def open(self) -> None:
        """Build and open the store."""
        if self._open:
            return
        if self._store is None:
            assert isinstance(self._store_spec, str)
            self._store = store_from_url(self._store_spec)
        await self._store.open()
        self._open = True

    async def close(self) -> None:
        """Drain queued appends and close the store."""
        if self._open and self._store is not None:
            self._open = False
            try:
                await self.snapshotter.drain()  # due snapshots are written, not dropped
            except Exception as exc:  # never keeps the store from closing
                _log.warning("snapshots still due at close were not saved: %s", exc)
            try:
                await self._store.close()
            finally:
                # After the store drained: a command committing during close re-caches
                # its aggregate, and a reopened application must not trust that entry.
                self.cache.clear()
            if isinstance(self._store_spec, str):
                self._store = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- commands ------------------------------------------------------------------------

    def unit_of_work(
        self, *, correlation_id: str | None = None, causation_id: str | None = None
    ) -> UnitOfWork:
        """A new unit of work (use it with ``async with``)."""
        check_ids(correlation_id, causation_id)
        return UnitOfWork(self, correlation_id=correlation_id, causation_id=causation_id)

    def handler(
        self, command_type: type[C], *, retry: RetryPolicy | None = None
    ) -> Callable[[Handler[C]], Handler[C]]:
        """Decorator registering ``async def handler(uow, command)`` for ``command_type``."""

        def register(fn: Handler[C]) -> Handler[C]:
            self.commands.register(command_type, fn, retry=retry)
            return fn

        return register

    async def handle(
        self,
        command: Command,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> int | None:
        """Validate ``command``, run its handler in a unit of work and commit.

        Returns the global position of the last event committed (None when the handler
        recorded nothing). A query can wait for read models to reach this position.
        ``correlation_id`` and ``causation_id`` are stored with the events (a message
        handler passes its message's: ``MessageContext.correlation_id``/``causation_id``).
        With ``idempotency_key``, the events' ids derive from the key, and a command whose
        key already recorded events is not run again: it returns the earlier position (the
        highest of its first 32 events). So a redelivered message or a deadline fired twice
        has no second effect; two concurrent first attempts are told apart by the store,
        which takes the second append as a retry of the first.
        """
        observer = self.observer
        timing: CommandTiming | None = None
        started = 0.0
        if observer is not None:
            # Observed, validation included (an invalid command counts as rejected). All in
            # this one coroutine: measured, each extra await layer cost about 1 us of W6's
            # ~20 us per command.
            name = getattr(type(command), "command_type", type(command).__name__)
            timing = observer.begin(name)
            started = time.perf_counter()
        error: BaseException | None = None
        try:
            if not (correlation_id is None and causation_id is None and idempotency_key is None):
                # Checked before any use: a key is hashed into event ids (UTF-8), the ids
                # are stored with the events.
                check_ids(correlation_id, causation_id, idempotency_key)
            entry = self.commands.entry_for(command)
            if idempotency_key is not None:
                earlier = await self.store.last_position_of(
                    keyed_event_ids(idempotency_key, 0, KEY_LOOKUP_EVENTS)
                )
                if earlier is not None:
                    return earlier  # handled before with this key: not run again
            policy = entry.retry or self.retry
            attempt = 1
            try:
                while True:
                    uow = UnitOfWork(
                        self,
                        correlation_id=correlation_id,
                        causation_id=causation_id,
                        idempotency_key=idempotency_key,
                    )
                    uow._timing = timing
                    try:
                        # The unit's `async with` protocol, inlined: the per-command path.
                        try:
                            await entry.handler(uow, command)
                            await uow.commit()
                        except BaseException:
                            uow._release(failed=True)
                            raise
                        uow._release()
                        return uow.position
                    except ConcurrencyError:
                        if attempt >= policy.attempts:
                            raise
                        await asyncio.sleep(policy.delay(attempt))
                        attempt += 1
            except (DomainError, ConcurrencyError):
                if idempotency_key is None:
                    raise
                # A repeat that ran beside the first attempt (both passed the check above)
                # fails in the handler once the first has committed (the seats it wanted
                # are the first's): it answers what the first did.
                earlier = await self.store.last_position_of(
                    keyed_event_ids(idempotency_key, 0, KEY_LOOKUP_EVENTS)
                )
                if earlier is None:
                    raise
                return earlier
        except BaseException as exc:
            error = exc
            raise
        finally:
            if observer is not None:
                observer.finish(name, started, timing, error)

    async def enqueue(self, job: Job, *, key: str | None = None) -> str:
        """Put a background job on the application's job queue; the job's id (ask the
        queue for its status or wait for its result). ``key`` orders jobs: one at a time."""
        if self.jobs is None:
            raise UsageError("no job queue: Application(..., jobs=JobQueue(broker, read_store))")
        return await self.jobs.enqueue(job, key=key)

    async def handle_json(self, name: str, payload: bytes | str, **kwargs: Any) -> int | None:
        """Decode a JSON command by its wire name and handle it: ValidationError if it is
        malformed, unknown, or nested deeper than :data:`~obelisk.domain.values.MAX_NESTING`
        levels (``payload``: bytes or str)."""
        return await self.handle(self.commands.decode(name, payload), **kwargs)

    # -- queries -------------------------------------------------------------------------

    async def get(
        self,
        cls: type[A],
        aggregate_id: str,
        *,
        version: int | None = None,
        as_of: datetime | float | None = None,
    ) -> A:
        """Load an aggregate for reading (not locked): current, as of ``version``, or as of
        a time (``as_of``, a datetime or seconds since the epoch: the events recorded up
        to then). A fresh instance every call: the caller may change it freely.

        Raises:
            AggregateNotFound: the aggregate has no events (by then).
            ValidationError: a malformed id, version or time.
        """
        validate_stream_id(aggregate_id)
        if as_of is not None:
            if version is not None:
                raise ValidationError("give version or as_of, not both")
            found = await self._load_as_of(cls, aggregate_id, check_as_of(as_of))
        else:
            if version is not None:
                check_version(version)
            found = await self._load(cls, aggregate_id, version)
        if found is None:
            raise AggregateNotFound(cls.aggregate_type, aggregate_id)
        return found

    async def _load(
        self, cls: type[A], aggregate_id: str, version: int | None = None
    ) -> A | None:
        return await self.loading.load(cls, aggregate_id, version)

    async def _load_as_of(self, cls: type[A], aggregate_id: str, when: float) -> A | None:
        stored = await self.store.read_stream(aggregate_id)
        # The stream's prefix recorded by then: versions are in commit order, and a clock
        # stepping back cannot pull a later event into the past.
        events = list(itertools.takewhile(lambda e: e.recorded_at <= when, stored))
        if not events:
            return None
        return cls.rebuild(aggregate_id, [e.event for e in events])
