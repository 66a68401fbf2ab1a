"""The base every contract mixin builds on: how a backend provides stores, and helpers."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from obelisk.domain.events import Event
from obelisk.store.base import EventStore
from obelisk.store.codec import EventCodec
from obelisk.store.records import AppendResult, StoredEvent

__all__ = [
    "ContractBase",
    "asyncio_test",
    "check_append_run",
    "check_log_positions",
    "foreign_threads",
]

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


def check_log_positions(
    positions: Sequence[int], expected_count: int, *, contiguous: bool
) -> list[int]:
    """Assert ``positions`` (a whole log, in read_all order) hold what every store promises.

    Every store's positions are positive, unique and strictly increasing in read order;
    a store with ``contiguous`` positions numbers them exactly 1..n.

    Args:
        positions: the position of every stored event, as read_all returned them.
        expected_count: how many events the test appended.
        contiguous: also demand 1..n with no holes.

    Returns:
        ``[0, *positions]``: index k is the position of the k-th event of the log, and
        index 0 is the ``after`` that reads from the start, so a test written for 1..n
        numbering reads the same with the store's own numbers.
    """
    got = list(positions)
    assert len(got) == expected_count, f"{expected_count} events appended, log holds {got}"
    assert all(position > 0 for position in got), f"positions must be >= 1: {got}"
    assert all(a < b for a, b in itertools.pairwise(got)), (
        f"positions must be unique and strictly increasing in read order: {got}"
    )
    if contiguous:
        assert got == list(range(1, expected_count + 1)), f"positions are not 1..n: {got}"
    return [0, *got]


def check_append_run(results: Sequence[AppendResult], counts: Sequence[int]) -> None:
    """Assert one append's parts took one contiguous run of positions, in request order.

    Even a store without a global lock numbers the events of one append (every part of an
    ``append_many``) consecutively: only the gaps between appends are allowed.

    Args:
        results: what ``append`` / ``append_many`` returned for a fresh (not retried) write.
        counts: how many events each part carried, in request order.
    """
    assert len(results) == len(counts)
    for result, count in zip(results, counts, strict=True):
        assert result.last_position - result.first_position + 1 == count, (
            f"{count} events must take {count} consecutive positions: {result}"
        )
    for earlier, later in itertools.pairwise(results):
        assert later.first_position == earlier.last_position + 1, (
            f"the parts of one append must be one run in request order: {earlier}, {later}"
        )


class ContractBase(abc.ABC):
    """What a backend implements to run the contract, and the helpers the tests share.

    pytest creates one instance per test, so ``tmp_path`` is per test as well.
    """

    contiguous_positions: ClassVar[bool] = True
    """Positions are 1..n with no holes.

    A store that takes no global lock sets False, and then positions are only unique,
    increasing in read order and contiguous within one append (all its parts). The suite
    then derives every expected position from positions the store returned.
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

    def assert_log_positions(self, stored: Sequence[StoredEvent], expected_count: int) -> list[int]:
        """Check the positions of a whole log (see :func:`check_log_positions`).

        Returns ``[0, *positions]``: ``at[k]`` is the k-th event's position, ``at[0]`` the
        ``after`` that reads from the start, ``at[-1]`` what ``last_position()`` must say.
        """
        return check_log_positions(
            [item.position for item in stored],
            expected_count,
            contiguous=self.contiguous_positions,
        )

    @staticmethod
    def assert_append_run(results: Sequence[AppendResult], counts: Sequence[int]) -> None:
        """Check one append took one run of positions (see :func:`check_append_run`)."""
        check_append_run(results, counts)

    @staticmethod
    def events_of(stored: Sequence[StoredEvent]) -> list[Event]:
        """The events without envelopes."""
        return [item.event for item in stored]
