"""A hypothesis state machine that checks an EventStore against a plain Python model.

The model is a list (the global log) and a dict (stream versions). Rules append to a few
streams with correct, stale, NO_STREAM, ANY and ahead-of-stream expected versions, append
to several streams at once, retry earlier appends with the same event ids and reuse those
ids where they do not belong. After every step the store must read back exactly the model.

The model numbers its log 1..n. A store whose positions are not contiguous (no global
lock) is held to the same model through a map from model position to store position,
learnt from the append results in order: each append must take one run of positions above
every earlier one, and read_all must list exactly those positions. With
``contiguous_positions`` the map must also be the identity.

The store is async and hypothesis is not: each machine owns an ``asyncio.Runner`` and
runs every step on it, so use this from a synchronous test. This module imports
hypothesis (a development dependency); ``import obelisk`` never imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar
from uuid import UUID

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from obelisk.domain.events import Event
from obelisk.errors import ConcurrencyError, IdempotencyConflict
from obelisk.store.base import EventStore
from obelisk.store.records import ANY, NO_STREAM, AppendRequest, AppendResult, StoredEvent
from obelisk.testing._contract_base import check_log_positions, foreign_threads
from obelisk.testing._contract_idempotency import new_ids
from obelisk.testing._events import ContractDeposited

__all__ = [
    "DEFAULT_SETTINGS",
    "EventStoreStateMachine",
    "StoreFactory",
    "run_store_state_machine",
]

StoreFactory = Callable[[], Coroutine[Any, Any, EventStore]]
"""Returns a new, empty, opened store each call (one per example)."""

DEFAULT_SETTINGS: Final = settings(
    max_examples=30,
    stateful_step_count=20,
    # Stores do real I/O on shared machines: a deadline would fail on noise, not on bugs.
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Bounded so one backend runs in seconds; raise max_examples for a soak run."""

STREAMS: Final = ("st-a", "st-b", "st-c")
EXPECTATIONS: Final = ("exact", "stale", "no_stream", "any", "ahead")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RecordedAppend:
    """An acknowledged append made with explicit event ids, kept to be retried."""

    requests: tuple[AppendRequest, ...]
    results: tuple[AppendResult, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    stream_id: str
    version: int
    event: Event
    event_id: UUID | None  # None when the store generated it


def expected_version_for(expectation: str, current: int) -> int:
    """The expected version that ``expectation`` names for a stream at ``current``."""
    if expectation == "exact":
        return current
    if expectation == "stale":
        # A stream at 0 has no earlier version; "ahead" is the only wrong number left.
        return current - 1 if current > 0 else 1
    if expectation == "no_stream":
        return NO_STREAM
    if expectation == "any":
        return ANY
    return current + 1


class EventStoreStateMachine(RuleBasedStateMachine):
    """Model-based test of one store; subclass with ``store_factory`` set, or use
    :func:`run_store_state_machine`."""

    store_factory: ClassVar[StoreFactory | None] = None
    contiguous_positions: ClassVar[bool] = True
    """Demand store positions 1..n; see ``ContractBase.contiguous_positions``."""
    recorded = Bundle("recorded")

    def __init__(self) -> None:
        super().__init__()
        factory = type(self).store_factory
        if factory is None:
            raise TypeError("set store_factory or use run_store_state_machine(factory)")
        self._threads_before = set(threading.enumerate())
        self._loop_errors: list[dict[str, Any]] = []
        self._runner = asyncio.Runner()
        try:
            self._runner.get_loop().set_exception_handler(
                lambda _loop, context: self._loop_errors.append(context)
            )
            self._store = self._runner.run(factory())
        except BaseException:
            # Hypothesis calls teardown only for a machine that was built.
            self._runner.close()
            raise
        self._log: list[_Row] = []
        # The store position of each model row, in model (read) order.
        self._positions: list[int] = []
        self._versions: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._amounts = itertools.count(1)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    def _append_many(self, requests: list[AppendRequest]) -> list[AppendResult]:
        # append_many may return a future tied to the running loop: call it inside one.
        async def append() -> list[AppendResult]:
            return await self._store.append_many(requests)

        return self._run(append())

    def teardown(self) -> None:
        """Close the store and the loop; fail if either left something behind."""
        try:
            self._run(self._store.close())
        finally:
            self._runner.close()  # also joins the loop's to_thread workers
        assert not self._loop_errors, f"unhandled event-loop exceptions: {self._loop_errors}"
        leaked = foreign_threads(self._threads_before)
        assert not leaked, f"threads still running after close: {leaked}"

    # -- the model -----------------------------------------------------------------------

    def _events(self, count: int) -> list[Event]:
        # Unique amounts make every event distinguishable in the log.
        return [ContractDeposited(amount=next(self._amounts)) for _ in range(count)]

    def _accepts(self, requests: list[AppendRequest]) -> bool:
        return all(r.expected_version in (ANY, self._versions[r.stream_id]) for r in requests)

    def _apply(self, requests: list[AppendRequest]) -> list[AppendResult]:
        """Append ``requests`` to the model; the results the store must return."""
        results = []
        for request in requests:
            sid = request.stream_id
            first = len(self._log) + 1
            ids: list[UUID | None] = [None] * len(request.events)
            if request.event_ids is not None:
                ids = [*request.event_ids]
            for event, event_id in zip(request.events, ids, strict=True):
                self._versions[sid] += 1
                self._log.append(_Row(sid, self._versions[sid], event, event_id))
            results.append(AppendResult(sid, self._versions[sid], first, len(self._log)))
        return results

    def _learn_positions(
        self, expected: list[AppendResult], results: list[AppendResult]
    ) -> list[AppendResult]:
        """Map the new model rows to the store's positions; the results the store owes.

        The whole append takes one run of positions starting where the store's first
        result says, above every earlier position (sequential appends commit in order).
        ``expected`` numbers rows 1..n; the returned copy uses the store's numbers.
        """
        added = len(self._log) - len(self._positions)
        assert results, "append_many returned no results"
        start = results[0].first_position
        assert not self._positions or start > self._positions[-1], (
            f"an append took position {start}, not after {self._positions[-1]}"
        )
        if self.contiguous_positions:
            assert start == len(self._positions) + 1, f"position {start} leaves a gap"
        self._positions.extend(range(start, start + added))
        return [
            msgspec.structs.replace(
                result,
                first_position=self._positions[result.first_position - 1],
                last_position=self._positions[result.last_position - 1],
            )
            for result in expected
        ]

    def _attempt(self, requests: list[AppendRequest]) -> Any:
        if not self._accepts(requests):
            try:
                self._append_many(requests)
            except ConcurrencyError:
                return multiple()
            raise AssertionError(f"a stale append was accepted: {requests}")
        results = self._append_many(requests)
        assert results == self._learn_positions(self._apply(requests), results)
        if all(r.event_ids is not None for r in requests):
            return RecordedAppend(tuple(requests), tuple(results))
        return multiple()

    # -- rules ---------------------------------------------------------------------------

    @rule(
        target=recorded,
        stream=st.sampled_from(STREAMS),
        expectation=st.sampled_from(EXPECTATIONS),
        count=st.integers(1, 3),
        with_ids=st.booleans(),
    )
    def append(self, stream: str, expectation: str, count: int, with_ids: bool) -> Any:
        """Append to one stream with an expected version that may be wrong."""
        expected = expected_version_for(expectation, self._versions[stream])
        ids = new_ids(count) if with_ids else None
        return self._attempt([AppendRequest(stream, self._events(count), expected, None, ids)])

    @rule(
        target=recorded,
        streams=st.lists(st.sampled_from(STREAMS), min_size=2, max_size=3, unique=True),
        expectations=st.lists(st.sampled_from(EXPECTATIONS), min_size=3, max_size=3),
        with_ids=st.booleans(),
    )
    def append_many(self, streams: list[str], expectations: list[str], with_ids: bool) -> Any:
        """Append to several streams at once: all parts are written or none."""
        requests = []
        for sid, expectation in zip(streams, expectations, strict=False):
            expected = expected_version_for(expectation, self._versions[sid])
            ids = new_ids(2) if with_ids else None
            requests.append(AppendRequest(sid, self._events(2), expected, None, ids))
        return self._attempt(requests)

    @rule(previous=recorded, expectation=st.sampled_from(EXPECTATIONS))
    def retry(self, previous: RecordedAppend, expectation: str) -> None:
        """Send an acknowledged append again: the first results, and nothing written."""
        requests = [
            msgspec.structs.replace(
                r, expected_version=expected_version_for(expectation, self._versions[r.stream_id])
            )
            for r in previous.requests
        ]
        # The model does not move: the invariants then prove the store wrote nothing.
        assert self._append_many(requests) == list(previous.results)

    @rule(previous=recorded, other=st.sampled_from(STREAMS), add_new_id=st.booleans())
    def reuse_ids(self, previous: RecordedAppend, other: str, add_new_id: bool) -> None:
        """Reuse stored ids in another stream, or with one new id: IdempotencyConflict."""
        part = previous.requests[0]
        events = list(part.events)
        ids = list(part.event_ids or ())
        if add_new_id or other == part.stream_id:
            target = part.stream_id
            events.append(self._events(1)[0])
            ids.extend(new_ids(1))
        else:
            target = other
        request = AppendRequest(target, events, ANY, None, ids)
        try:
            self._append_many([request])
        except IdempotencyConflict:
            return
        raise AssertionError(f"reused event ids were accepted: {request}")

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def the_global_log_matches_the_model(self) -> None:
        """read_all lists the model's log at the positions the appends were given.

        Positions are unique and increasing (1..n with no gap when the store promises
        contiguous positions), with the same events and ids in the same order.
        """
        stored = self._run(self._read_everything())
        at = check_log_positions(
            [e.position for e in stored], len(self._log), contiguous=self.contiguous_positions
        )
        assert at[1:] == self._positions
        assert [(e.position, e.stream_id, e.version, e.event) for e in stored] == [
            (position, row.stream_id, row.version, row.event)
            for position, row in zip(self._positions, self._log, strict=True)
        ]
        for item, row in zip(stored, self._log, strict=True):
            if row.event_id is not None:
                assert item.event_id == row.event_id
        assert len({e.raw_event_id for e in stored}) == len(stored)
        assert self._run(self._store.last_position()) == at[-1]

    @invariant()
    def every_stream_matches_the_model(self) -> None:
        """Each stream is at the model's version and reads back versions 1..n in order."""
        for sid in STREAMS:
            assert self._run(self._store.stream_version(sid)) == self._versions[sid]
            events = self._run(self._store.read_stream_events(sid))
            assert events == [row.event for row in self._log if row.stream_id == sid]

    async def _read_everything(self) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        while True:
            page = await self._store.read_all(after=out[-1].position if out else 0, limit=25)
            if not page:
                return out
            out.extend(page)


def run_store_state_machine(
    factory: StoreFactory,
    *,
    settings: settings | None = None,
    contiguous_positions: bool = True,
) -> None:
    """Run :class:`EventStoreStateMachine` against the stores ``factory`` creates.

    Args:
        factory: returns a new, empty, opened store; called once per example.
        settings: hypothesis settings; :data:`DEFAULT_SETTINGS` when omitted.
        contiguous_positions: demand positions 1..n; False for a store without a global
            lock, whose positions are only unique, increasing and contiguous per append.
    """
    machine = type(
        "EventStoreModelTest",
        (EventStoreStateMachine,),
        {"store_factory": staticmethod(factory), "contiguous_positions": contiguous_positions},
    )
    run_state_machine_as_test(machine, settings=settings or DEFAULT_SETTINGS)
