"""Application: wires an event store, the command handlers and the unit of work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from obelisk.application.cache import AggregateCache
from obelisk.application.commands import Command, CommandRegistry, Handler
from obelisk.application.locks import KeyedLock
from obelisk.application.retry import NO_RETRY, RetryPolicy
from obelisk.application.unit_of_work import UnitOfWork
from obelisk.domain.aggregate import Aggregate
from obelisk.errors import AggregateNotFound, ConcurrencyError
from obelisk.store.base import EventStore
from obelisk.store.url import store_from_url

__all__ = ["Application"]

A = TypeVar("A", bound=Aggregate)
C = TypeVar("C", bound=Command)


class Application:
    """The command side of an obelisk service.

    Args:
        store: an :class:`EventStore`, or a URL (``sqlite:///app.db``, ``memory://``).
            The store is built when the application opens, never at import time.
        retry: the default policy for handlers registered without one; by default a
            ConcurrencyError reaches the caller (no retry).
        cache_size: how many aggregates the unit-of-work cache keeps (0 disables it).
    """

    def __init__(
        self,
        store: str | EventStore = "memory://",
        *,
        retry: RetryPolicy | None = None,
        cache_size: int = 10_000,
    ):
        self._store_spec = store
        self._store: EventStore | None = store if isinstance(store, EventStore) else None
        self.retry = retry if retry is not None else NO_RETRY
        self.commands = CommandRegistry()
        self._locks = KeyedLock()
        self.cache = AggregateCache(cache_size)
        self._open = False

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        """The event store (available once the application is open)."""
        if self._store is None:
            raise RuntimeError("the application is not open: use `async with app:`")
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
        return UnitOfWork(self, correlation_id=correlation_id, causation_id=causation_id)

    def handler(
        self, command_type: type[C], *, retry: RetryPolicy | None = None
    ) -> Callable[[Handler[C]], Handler[C]]:
        """Decorator registering ``async def handler(uow, command)`` for ``command_type``."""

        def register(fn: Handler[C]) -> Handler[C]:
            self.commands.register(command_type, fn, retry=retry)
            return fn

        return register

    async def handle(self, command: Command, *, correlation_id: str | None = None) -> int | None:
        """Validate ``command``, run its handler in a unit of work and commit.

        Returns the global position of the last event committed (None when the handler
        recorded nothing). A query can wait for read models to reach this position.
        """
        entry = self.commands.entry_for(command)
        policy = entry.retry or self.retry
        attempt = 1
        while True:
            uow = UnitOfWork(self, correlation_id=correlation_id)
            try:
                # The unit's `async with` protocol, inlined: this is the per-command path.
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

    async def handle_json(self, name: str, payload: bytes, **kwargs: Any) -> int | None:
        """Decode a JSON command by its wire name and handle it (ValidationError if malformed)."""
        return await self.handle(self.commands.decode(name, payload), **kwargs)

    # -- queries -------------------------------------------------------------------------

    async def get(self, cls: type[A], aggregate_id: str, *, version: int | None = None) -> A:
        """Load an aggregate for reading (not locked), optionally as of ``version``."""
        aggregate = await self._load(cls, aggregate_id, version)
        if aggregate is None:
            raise AggregateNotFound(cls.aggregate_type, aggregate_id)
        return aggregate

    async def _load(
        self, cls: type[A], aggregate_id: str, version: int | None = None
    ) -> A | None:
        events = await self.store.read_stream_events(aggregate_id, to_version=version)
        if not events:
            return None
        return cls.rebuild(aggregate_id, events)
