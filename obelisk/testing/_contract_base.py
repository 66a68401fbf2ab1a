"""The base every contract mixin builds on: how a backend provides stores, and helpers."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from obelisk.domain.events import Event
from obelisk.store.base import EventStore
from obelisk.store.codec import EventCodec
from obelisk.store.records import StoredEvent

__all__ = ["ContractBase", "asyncio_test", "foreign_threads"]

asyncio_test = pytest.mark.asyncio
"""Marks one contract test as async.

Marks go on each method, not on the class: a class-wide ``pytestmark`` would also land on
the synchronous state-machine test, which pytest-asyncio rejects. Explicit marks also make
the suite run under pytest-asyncio's strict mode, the default for third parties.
"""


def foreign_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads alive now that were not in ``before``, except the loop's executor workers.

    ``asyncio.to_thread`` workers (named ``asyncio_N``) belong to the event loop and end
    when it closes; any other new thread was started by the store and outlived it.
    """
    return [
        thread
        for thread in threading.enumerate()
        if thread not in before and thread.is_alive() and not thread.name.startswith("asyncio_")
    ]


class ContractBase(abc.ABC):
    """What a backend implements to run the contract, and the helpers the tests share.

    pytest creates one instance per test, so ``tmp_path`` is per test as well.
    """

    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _contract_tmp_path(self, tmp_path: Path) -> None:
        # A plain attribute rather than a fixture argument so create_store keeps a simple
        # signature and the state-machine test can create stores outside any fixture.
        self.tmp_path = tmp_path

    @abc.abstractmethod
    async def create_store(self, codec: EventCodec | None = None) -> EventStore:
        """A new, empty and opened store; ``codec`` replaces the default when given.

        Every call must return a store over its own database: tests and state-machine
        examples assume they start from nothing. ``self.tmp_path`` is a fresh directory
        for this test.
        """

    @contextlib.asynccontextmanager
    async def open_store(self, codec: EventCodec | None = None) -> AsyncIterator[EventStore]:
        """A store from :meth:`create_store`, closed on exit.

        Fails the test if the loop saw an unhandled exception (a future set twice, a task
        that died unobserved) or if the store left a thread running after close.
        """
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        previous = loop.get_exception_handler()
        before = set(threading.enumerate())
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:
            store = await self.create_store(codec)
            try:
                yield store
            finally:
                await store.close()
        finally:
            loop.set_exception_handler(previous)
        assert not errors, f"unhandled event-loop exceptions: {errors}"
        leaked = foreign_threads(before)
        assert not leaked, f"threads still running after close: {leaked}"

    @staticmethod
    async def everything(store: EventStore) -> list[StoredEvent]:
        """Every stored event in position order, read in pages to exercise ``after``."""
        out: list[StoredEvent] = []
        while True:
            page = await store.read_all(after=out[-1].position if out else 0, limit=50)
            if not page:
                return out
            out.extend(page)

    @staticmethod
    def events_of(stored: Sequence[StoredEvent]) -> list[Event]:
        """The events without envelopes."""
        return [item.event for item in stored]
