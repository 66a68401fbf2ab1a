"""The projection runner: pages of the log in, one transaction per page out.

For each page of events (after its checkpoint, of the types its projection handles) the
runner calls the handlers, which stage changes; then, in one transaction on the read
database, it writes the merged changes and moves the checkpoint. The checkpoint update is
fenced by the lease (see :mod:`obelisk.projections.readstore`): a runner that lost its
lease cannot commit. Whatever stops a runner — a crash, SIGKILL, a lost connection — it
resumes from the committed checkpoint, so every event's effect lands exactly once.

A handler that raises is a poison event: by default the runner stops and reports it
(:class:`ProjectionError`); with ``on_error="dead-letter"`` the event is recorded in the
dead-letter table, the rest of its page is applied, and the runner goes on. An event of a
handled type that cannot be decoded (a corrupt payload, written by old code or another
writer) is a poison event too: it reaches the policy as its CorruptEvent, never stalls the
page it is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import traceback
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from obelisk._arguments import check_int, check_seconds
from obelisk.domain.events import UndecodableEvent
from obelisk.errors import (
    ObeliskError,
    StoreError,
    StoreUnavailable,
    ValidationError,
)
from obelisk.observability.histogram import FastHistogram
from obelisk.projections._read_checks import MAX_PARTITIONS
from obelisk.projections.projection import Context, Projection
from obelisk.projections.readstore import Claim, DeadLetter, ReadStore, ReadTransaction
from obelisk.projections.tables import ChangeSet, Table
from obelisk.store.records import undecodable_error

if TYPE_CHECKING:
    from obelisk.store.base import EventStore
    from obelisk.store.records import StoredEvent

__all__ = ["Lag", "ProjectionError", "ProjectionRunner", "partition_of"]

_log = logging.getLogger("obelisk.projections")

OnError = Literal["stop", "dead-letter"]
MAX_SPAN_LINKS: Final = 32
MAX_PAYLOAD_SHOWN: Final = 1024  # bytes of an undecodable payload kept in its dead letter
_FIRST_RETRY: Final = 0.005  # after a wake-up that found nothing readable yet
BATCH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition of ``stream_id`` among ``partitions`` (stable across processes)."""
    return zlib.crc32(stream_id.encode()) % partitions


class ProjectionError(ObeliskError):
    """A handler failed on an event and the projection stopped (``on_error="stop"``)."""

    def __init__(self, projection: str, stored: StoredEvent, error: BaseException) -> None:
        self.projection = projection
        self.stream_id = stored.stream_id
        self.position = stored.position
        self.version = stored.version
        self.event_type = stored.event_type
        self.error = error
        super().__init__(
            f"projection {projection!r} stopped at position {stored.position} "
            f"(stream {stored.stream_id!r} version {stored.version}, "
            f"{stored.event_type}): {type(error).__name__}: {error}"
        )


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a runner is behind the log.

    ``positions`` is the head's position minus the checkpoint (0 when caught up; on
    PostgreSQL positions are not contiguous, so it is not an event count). ``seconds`` is
    the age of the newest applied event while the runner is behind, 0 once caught up.
    """

    positions: int
    seconds: float


class _HandlerFailed(Exception):
    def __init__(self, index: int | None, error: BaseException) -> None:
        self.index = index  # None: the flush failed, the event is not known
        self.error = error


class _Fenced(Exception):
    """The checkpoint update matched no row: lease lost, paused, or generation retired."""


# A callback run inside the transaction of the batch that catches up (a rebuild's switch).
OnCaughtUp = Callable[[ReadTransaction, int], Awaitable[None]]


class ProjectionRunner:
    """Runs one partition of a projection: catch up, then follow the log live.

    Args:
        projection: the projection instance.
        store: the event store to read.
        read_store: the read database (checkpoints live there).
        partition / partitions: which share of the streams this runner applies (by a
            hash of the stream id); ``partitions`` is fixed when the projection first runs.
        page_size: events per batch (and per read).
        on_error: ``"stop"`` (raise :class:`ProjectionError`) or ``"dead-letter"``.
        lease_seconds: how long a lease lasts without renewal; a killed runner's
            partition is taken over after at most this long.
        poll_interval: the longest wait for new events when nothing wakes the runner.
        owner: this runner's id in the lease table (a fresh one by default).
        tracer: an OpenTelemetry tracer (:func:`~obelisk.observability.obelisk_tracer`):
            one span per batch, linked to the traced commands that wrote its events.
        invalidate: called with the tags handlers passed to ``ctx.invalidate`` once their
            batch has committed (``QueryCache.invalidate``).
        linger: seconds to wait after a wake-up before reading, so that the commits of a
            busy moment make one batch (fewer read-store transactions; adds at most this
            much lag). 0: read at once.
    """

    # Faults that pass (a lost connection, a locked file): retried with backoff. Anything
    # else (a corrupt row, a broken statement) would fail the same way again: it stops.
    transient: ClassVar[tuple[type[BaseException], ...]] = (StoreUnavailable,)

    def __init__(
        self,
        projection: Projection,
        store: EventStore,
        read_store: ReadStore,
        *,
        partition: int = 0,
        partitions: int = 1,
        page_size: int = 1000,
        on_error: OnError = "stop",
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        owner: str | None = None,
        tracer: Any = None,
        invalidate: Callable[..., object] | None = None,
        linger: float = 0.0,
    ) -> None:
        if not isinstance(projection, Projection):
            raise ValidationError(f"expected a Projection instance, got {projection!r}")
        if not getattr(type(projection), "name", None):
            raise ValidationError(f"{type(projection).__qualname__} has no name")
        check_int("partitions", partitions, 1, MAX_PARTITIONS)
        if not 0 <= check_int("partition", partition) < partitions:
            raise ValidationError(f"need 0 <= partition < partitions, got {partition}/{partitions}")
        check_int("page_size", page_size, 1, 1_000_000)
        if on_error not in ("stop", "dead-letter"):
            raise ValidationError(f"on_error must be 'stop' or 'dead-letter', got {on_error!r}")
        check_seconds("lease_seconds", lease_seconds)
        check_seconds("poll_interval", poll_interval)
        if not 0 <= check_seconds("linger", linger, zero=True) < lease_seconds / 3:
            raise ValidationError("linger must be >= 0 and well under lease_seconds")
        self.projection = projection
        self.linger = linger
        self.tracer = tracer
        self.invalidate = invalidate
        self.name = type(projection).name
        self.store = store
        self.read_store = read_store
        self.partition = partition
        self.partitions = partitions
        self.page_size = page_size
        self.on_error: OnError = on_error
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = poll_interval
        self.owner = owner or f"{uuid.uuid4().hex[:12]}"
        self.position = 0  # applied and committed (all events up to it)
        self.events_applied = 0
        self.batches = 0
        self.dead_lettered = 0
        self.errors = 0
        self.batch_seconds = FastHistogram(BATCH_BUCKETS)
        self.batch_events = FastHistogram((1, 10, 100, 500, 1000, 2000, 5000, 10000))
        self.caught_up = False
        self.head = 0  # the log's head when last read (for lag without a query)
        self.generation: int | None = None
        self._last_event_at: float | None = None
        self._dispatch = projection.dispatch()
        self._types: list[str] | None = type(projection).event_types()
        cls = type(projection)
        self._hooks = (
            cls.before_batch is not Projection.before_batch
            or cls.after_batch is not Projection.after_batch
        )
        self._stopping = False
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._claim: Claim | None = None
        self.on_batch: Callable[[ProjectionRunner], None] | None = None

    def __repr__(self) -> str:
        return (
            f"ProjectionRunner({self.name!r}, partition={self.partition}/{self.partitions}, "
            f"position={self.position})"
        )

    # -- public control ----------------------------------------------------------------

    async def run(self) -> None:
        """Claim the partition (waiting while another runner holds it), catch up, follow
        the log until :meth:`stop`; a lost connection or lease goes back to claiming."""
        from obelisk.projections.rebuild import ensure_current

        backoff = 0.05
        while not self._stopping:
            try:
                state = await ensure_current(
                    self.projection,
                    self.store,
                    self.read_store,
                    self.partitions,
                    owner=self.owner,
                    lease_seconds=self.lease_seconds,
                )
                if state.paused:
                    await self._sleep(self.poll_interval)
                    continue
                claim = await self.read_store.claim(
                    self.name,
                    state.live_generation,
                    self.partition,
                    self.owner,
                    self.lease_seconds,
                )
                if claim is None:  # someone else holds it: stand by
                    await self._sleep(min(self.poll_interval, self.lease_seconds / 3))
                    continue
                batches = self.batches
                try:
                    await self.serve(claim)
                finally:
                    if self.batches > batches:
                        backoff = 0.05  # it made progress: the next fault starts afresh
            except self.transient as exc:
                # Only faults that pass (a lost connection, a locked file) are retried: a
                # corrupt row or a broken statement would fail the same way forever.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # a cancellation that arrived while the error was raised
                self.errors += 1
                _log.warning("projection %s: %s; retrying in %.2fs", self.name, exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    @property
    def last_event_at(self) -> float | None:
        """When the newest event this runner applied was recorded (epoch seconds; None
        before its first batch). Read in ``on_batch``, ``time.time()`` minus it is how long
        that event took from its commit into the read model."""
        return self._last_event_at

    def stop(self) -> None:
        """Finish the batch in progress, release the lease and return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    async def run_until_caught_up(self, *, on_caught_up: OnCaughtUp | None = None) -> int:
        """Claim, apply everything committed so far, release; the checkpoint reached.

        ``on_caught_up(tx, position)`` runs inside the transaction of the batch that
        reaches the head (a rebuild switches generations there).
        """
        from obelisk.projections.rebuild import ensure_current

        if self.generation is None:
            state = await ensure_current(
                self.projection,
                self.store,
                self.read_store,
                self.partitions,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
            )
            self.generation = state.live_generation
        claim = await self.read_store.claim(
            self.name, self.generation, self.partition, self.owner, self.lease_seconds
        )
        if claim is None:
            raise ProjectionBusy(self.name, self.partition)
        self._stopping = False
        if not await self.serve(claim, until_caught_up=True, on_caught_up=on_caught_up):
            raise ProjectionBusy(self.name, self.partition)
        return self.position

    async def wait_for(self, position: int, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until this runner has applied everything up to ``position`` (a command's
        returned position); False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.position < position:
            self._advanced.clear()
            if self.position >= position:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return self.position >= position
        return True

    async def lag(self) -> Lag:
        """Positions and seconds behind the event store's head (read now)."""
        self.head = max(self.head, await self.store.last_position())
        return self.known_lag()

    def known_lag(self) -> Lag:
        """The lag against the head as last read (no query: for metrics scrapes)."""
        behind = max(0, self.head - self.position)
        if behind == 0 or self._last_event_at is None:
            return Lag(behind, 0.0)
        return Lag(behind, max(0.0, time.time() - self._last_event_at))

    # -- the loop ----------------------------------------------------------------------

    async def serve(
        self,
        claim: Claim,
        *,
        until_caught_up: bool = False,
        on_caught_up: OnCaughtUp | None = None,
    ) -> bool:
        """Apply the log for ``claim`` until stopped, fenced off, or (``until_caught_up``)
        at the head; False when fenced off (lease lost, paused, generation retired).
        The lease is released unless fenced off."""
        self._claim = claim
        self.generation = claim.generation
        self.position = claim.position
        self._advanced.set()
        store = self.store
        names = {t: self.read_store.physical(t, claim.generation) for t in self.projection.tables}
        store._add_waker(self._wake)
        # A catch-up pass never waits for commits: no LISTEN connection for it.
        channel = None if until_caught_up else store._wake_channel(self._wake.set)
        renew_every = self.lease_seconds / 3
        last_commit = time.monotonic()
        check_head = False
        woken = False
        retry = 0.0  # the next short look after a fruitless wake-up (0: none pending)
        release = True
        prefetch: asyncio.Future[list[StoredEvent]] | None = None
        try:
            while not self._stopping:
                self._wake.clear()  # before reading: a commit during the read wakes us again
                if channel is not None:
                    try:
                        await channel.ensure()
                    except StoreError as exc:
                        _log.warning("projection %s polls, wake channel down: %s", self.name, exc)
                # The head is read before the page: once a short page comes back, every
                # position up to that head has been seen (stores never show a position
                # before all lower ones are visible), even if none of it was ours.
                head = await store.last_position() if check_head else None
                if head is not None:
                    self.head = head
                if prefetch is not None:
                    page = await prefetch
                    prefetch = None
                else:
                    page = await store.read_all(
                        after=self.position,
                        limit=self.page_size,
                        types=self._types,
                        keep_undecodable=True,
                    )
                short = len(page) < self.page_size
                if not short:
                    # Catching up: read the next page while this one is applied (the event
                    # database and the read database work at the same time).
                    prefetch = asyncio.ensure_future(
                        store.read_all(
                            after=page[-1].position,
                            limit=self.page_size,
                            types=self._types,
                            keep_undecodable=True,
                        )
                    )
                caught_up = short and head is not None
                target = page[-1].position if page else self.position
                if caught_up and head is not None and head > target:
                    target = head
                if self.partitions > 1 and page:
                    mine = [
                        e
                        for e in page
                        if partition_of(e.stream_id, self.partitions) == self.partition
                    ]
                else:
                    mine = page
                finish = on_caught_up if (until_caught_up and caught_up) else None
                due = time.monotonic() - last_commit > renew_every
                if mine or target > self.position or due or finish is not None:
                    if not await self._apply(claim, names, mine, target, finish, []):
                        release = False
                        return False  # fenced off: the caller decides what next
                    last_commit = time.monotonic()
                if not short:
                    self.caught_up = False
                    check_head = False
                    continue
                if head is None:
                    check_head = True  # read the head, then the tail again
                    continue
                self.caught_up = True
                if until_caught_up:
                    return True
                if page:
                    retry = 0.0
                elif woken:
                    retry = _FIRST_RETRY
                if retry and not page and retry < self.poll_interval:
                    # Woken for a commit we could not read yet: on PostgreSQL a commit is
                    # readable only once older transactions on the server have ended, and
                    # no second wake-up comes when they do. Look again soon, backing off.
                    woken = await self._sleep(min(retry, renew_every))
                    retry *= 2
                else:
                    retry = 0.0
                    woken = await self._sleep(min(self.poll_interval, renew_every))
                    if woken and self.linger and not self._stopping:
                        # Let more commits land: under load one larger batch (one read-store
                        # transaction) instead of one per commit, for at most `linger` lag.
                        await asyncio.sleep(self.linger)
            return True
        finally:
            store._remove_waker(self._wake)
            self._claim = None
            if prefetch is not None:
                # Not awaited: an await here could lose a cancellation of this task.
                prefetch.cancel()
                prefetch.add_done_callback(_retrieve)
            if channel is not None:
                await channel.close()
            if release:
                # Also after a poison event or a lost connection: the next runner need not
                # wait for the lease to expire (if the database is gone, it will have to).
                with contextlib.suppress(Exception):
                    await self.read_store.release(claim)

    async def _sleep(self, seconds: float) -> bool:
        """Wait for a wake-up or ``seconds``; True when woken."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    # -- batches -----------------------------------------------------------------------

    async def _apply(
        self,
        claim: Claim,
        names: dict[Table, str],
        events: Sequence[StoredEvent],
        target: int,
        on_caught_up: OnCaughtUp | None,
        letters: list[DeadLetter],
    ) -> bool:
        """Apply ``events`` and move the checkpoint to ``target``; False when fenced off.

        A failing event is isolated: the events before it commit as one batch, then the
        policy decides about it (stop, or dead-letter it with the checkpoint past it), then
        the rest follow.
        """
        pending = list(events)
        while True:
            try:
                await self._commit(claim, names, pending, target, letters, on_caught_up)
                return True
            except _Fenced:
                return False
            except _HandlerFailed as failed:
                if not await self.read_store.holds(claim):
                    # E.g. a rebuild retired this generation and dropped its tables under
                    # the batch: not the event's fault.
                    return False
                if failed.index is None:
                    if len(pending) == 1:
                        failed = _HandlerFailed(0, failed.error)
                    else:
                        # The flush failed: halve the batch until one event is to blame.
                        half = len(pending) // 2
                        if not await self._apply(
                            claim, names, pending[:half], pending[half - 1].position, None, letters
                        ):
                            return False
                        pending = pending[half:]
                        continue
                index = failed.index
                assert index is not None
                poison = pending[index]
                if index and not await self._apply(
                    claim, names, pending[:index], pending[index - 1].position, None, letters
                ):
                    return False
                if self.on_error == "stop":
                    if type(poison.event) is UndecodableEvent:
                        raise failed.error from None  # the store's own error, naming the row
                    raise ProjectionError(self.name, poison, failed.error) from failed.error
                _log.error(
                    "projection %s dead-letters position %d (%s): %s",
                    self.name,
                    poison.position,
                    poison.event_type,
                    failed.error,
                )
                letters.append(
                    DeadLetter(
                        self.name,
                        claim.generation,
                        poison.position,
                        poison.stream_id,
                        poison.version,
                        poison.event_type,
                        _described(poison, failed.error),
                        time.time(),
                    )
                )
                self.dead_lettered += 1
                pending = pending[index + 1 :]
                if not pending:
                    # The dead letter and the checkpoint past it commit together.
                    try:
                        await self._commit(claim, names, [], target, letters, on_caught_up)
                    except _Fenced:
                        return False
                    return True
                # The next batch carries the letter (committed with the events after it).

    async def _commit(
        self,
        claim: Claim,
        names: dict[Table, str],
        events: Sequence[StoredEvent],
        target: int,
        letters: list[DeadLetter],
        on_caught_up: OnCaughtUp | None,
    ) -> None:
        tracer = self.tracer
        if tracer is None or not events:
            await self._commit_batch(claim, names, events, target, letters, on_caught_up)
            return
        from obelisk.observability.tracing import link_to

        # Links to the commands that wrote the batch's events (bounded: a span with
        # thousands of links costs more than the batch).
        links = []
        for stored in events:
            if stored.trace_context is not None:
                links.extend(link_to(stored))
                if len(links) >= MAX_SPAN_LINKS:
                    break
        attributes = {
            "obelisk.projection": self.name,
            "obelisk.partition": self.partition,
            "obelisk.events": len(events),
            "obelisk.position": target,
        }
        with tracer.start_as_current_span(
            "obelisk.projection.batch", links=links, attributes=attributes
        ):
            await self._commit_batch(claim, names, events, target, letters, on_caught_up)

    async def _commit_batch(
        self,
        claim: Claim,
        names: dict[Table, str],
        events: Sequence[StoredEvent],
        target: int,
        letters: list[DeadLetter],
        on_caught_up: OnCaughtUp | None,
    ) -> None:
        started = time.perf_counter()
        tables = self.projection.tables
        changes = {t: ChangeSet(t) for t in tables}
        dispatch = self._dispatch
        read_store = self.read_store
        applied = 0
        async with read_store.transaction() as tx:
            ctx = Context(tx, changes, names, read_store.qualified)
            if self._hooks:
                await self.projection.before_batch(ctx)
            for index, stored in enumerate(events):
                entry = dispatch.get(type(stored.event))
                if entry is None:
                    if type(stored.event) is UndecodableEvent:
                        # Read because its stored type is one this projection handles.
                        error = undecodable_error(stored)
                        raise _HandlerFailed(index, error) from error
                    continue  # a type this projection does not handle: skipped
                ctx.stored = stored
                try:
                    result = entry[0](stored.event, ctx)
                    if entry[1]:
                        await result  # type: ignore[misc]
                except StoreError as exc:
                    if isinstance(exc, self.transient):
                        raise
                    raise _HandlerFailed(index, exc) from exc
                except Exception as exc:
                    raise _HandlerFailed(index, exc) from exc
                applied += 1
            if self._hooks:
                await self.projection.after_batch(ctx)
            try:
                await tx.flush([(changes[t], names[t]) for t in tables])
            except StoreError as exc:
                if isinstance(exc, self.transient):
                    raise
                raise _HandlerFailed(None, exc) from exc
            for letter in letters:
                await read_store.record_dead_letter(tx, letter)
            await self._advance(tx, claim, target, events)
            if on_caught_up is not None:
                await on_caught_up(tx, target)
        letters.clear()
        if ctx._invalidated and self.invalidate is not None:
            # After the commit: a query reloading now reads the batch's rows.
            self.invalidate(*dict.fromkeys(ctx._invalidated))
        self._after_commit(events, target, applied, started)

    async def _advance(
        self, tx: ReadTransaction, claim: Claim, target: int, events: Sequence[StoredEvent]
    ) -> None:
        """Move the checkpoint in ``tx`` (renewing the lease); _Fenced when it was lost."""
        last_event_at = events[-1].recorded_at if events else None
        if not await self.read_store.advance(tx, claim, target, self.lease_seconds, last_event_at):
            raise _Fenced

    def _after_commit(
        self, events: Sequence[StoredEvent], target: int, applied: int, started: float
    ) -> None:
        """Book a committed batch: checkpoint, counters, waiters, the on_batch hook."""
        self.position = target
        if events:
            self._last_event_at = events[-1].recorded_at
            self.events_applied += applied
            self.batches += 1
            self.batch_events.observe(len(events))
            if started:
                self.batch_seconds.observe(time.perf_counter() - started)
        self._advanced.set()
        if self.on_batch is not None:
            self.on_batch(self)


def _described(poison: StoredEvent, error: BaseException) -> str:
    """A dead letter's error text; an undecodable event's raw payload goes with it (the
    row stays in the log too, where ``obelisk inspect --undecodable`` shows it)."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    event = poison.event
    if type(event) is UndecodableEvent:
        raw = event.data
        shown = raw[:MAX_PAYLOAD_SHOWN]
        more = f" ({len(raw)} bytes)" if len(raw) > MAX_PAYLOAD_SHOWN else ""
        text += f"; payload: {shown!r}{more}"
    return text


def _retrieve(future: asyncio.Future[list[StoredEvent]]) -> None:
    """Collect an abandoned read's outcome (so asyncio does not log it as never retrieved)."""
    if not future.cancelled():
        future.exception()


class ProjectionBusy(ObeliskError):
    """Another runner holds the partition's lease."""

    def __init__(self, name: str, partition: int) -> None:
        super().__init__(f"projection {name!r} partition {partition} is held by another runner")


def fair_share(partitions: int, workers: int) -> int:
    """How many partitions one of ``workers`` live workers should own."""
    return math.ceil(partitions / max(1, workers))
