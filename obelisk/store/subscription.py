"""Subscriptions: follow a store's log from a checkpoint, catching up and then live.

A subscription only ever reads with ``read_all(after=checkpoint)``, so it cannot skip or
repeat an event: whatever wakes it (a commit in this process, a PostgreSQL NOTIFY from
another process, or the polling fallback) only decides *when* it reads next. Losing the
wake-up channel (a dropped LISTEN connection) costs latency, never events: it polls until
the channel is back, then reads from its checkpoint again.

An event that cannot be decoded (an unknown type, a corrupt payload) is not a transient
fault: retrying cannot fix it. By default the subscription hands out every event before
it, then raises its UnknownEventType / CorruptEvent to the owner (logged, counted in
``undecodable``), with ``position`` left before it, so the owner can deploy an upcaster or
the missing class and resume. With ``undecodable="yield"`` it hands such rows out as
:class:`~obelisk.domain.events.UndecodableEvent` records instead, for the owner to
dead-letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

from obelisk.domain.events import UndecodableEvent
from obelisk.domain.values import shown
from obelisk.errors import StoreClosed, StoreError, ValidationError
from obelisk.store.inputs import check_types
from obelisk.store.records import StoredEvent, undecodable_error

if TYPE_CHECKING:
    from obelisk.store.base import EventStore

__all__ = ["Subscription", "WakeChannel"]

_log = logging.getLogger("obelisk.store.subscription")


class WakeChannel(Protocol):
    """A store-specific source of wake-ups from other processes (PostgreSQL: LISTEN)."""

    async def ensure(self) -> None:
        """(Re)connect if needed; raise StoreError while it cannot (the caller polls)."""

    async def close(self) -> None:
        """Release the channel's resources."""


class Subscription:
    """An async iterator over stored events after a checkpoint, following new commits.

    ``position`` is the checkpoint: the position of the last event handed out (``after``
    until then). Iterate events one by one (``async for event in sub``) or page by page
    (``async for page in sub.pages()``). Transient store errors (the database restarting)
    are retried with backoff; the subscription resumes from its checkpoint.

    Args:
        store: the store to follow.
        after: start after this position (0: from the beginning).
        types: only events of these type names.
        page_size: events per read.
        poll_interval: the longest wait between reads when nothing wakes the subscription.
        undecodable: ``"stop"`` (raise the row's error after the events before it) or
            ``"yield"`` (hand it out as an UndecodableEvent).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        after: int = 0,
        types: Iterable[str] | None = None,
        page_size: int = 1000,
        poll_interval: float = 1.0,
        undecodable: Literal["stop", "yield"] = "stop",
    ) -> None:
        if undecodable not in ("stop", "yield"):
            raise ValidationError(
                f"undecodable must be 'stop' or 'yield', got {shown(undecodable)}"
            )
        if type(after) is not int or not 0 <= after < 2**63:
            raise ValidationError(f"after must be a position >= 0, got {shown(after)}")
        if type(page_size) is not int or not 1 <= page_size <= 1_000_000:
            raise ValidationError(
                f"page_size must be an int from 1 to 10**6, got {shown(page_size)}"
            )
        if (
            type(poll_interval) not in (int, float)
            or not 0 < poll_interval <= 86_400  # NaN fails this too
        ):
            raise ValidationError(f"poll_interval must be seconds > 0, got {shown(poll_interval)}")
        self.store = store
        self.position = after
        self.types = None if types is None else check_types(types)
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.reads = 0
        self.wakeups = 0
        self.errors = 0
        self.undecodable = 0
        self.stop_at_undecodable = undecodable == "stop"
        self._wake = asyncio.Event()
        self._channel: WakeChannel | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following; an iteration in progress ends after its current wait."""
        self._closed = True
        self._wake.set()
        self.store._remove_waker(self._wake)
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    def wake(self) -> None:
        """Read again now (called by the store after a commit, and by wake channels)."""
        self.wakeups += 1
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StoredEvent]:
        async for page in self.pages():
            for event in page:
                self.position = event.position
                yield event

    async def pages(self) -> AsyncIterator[list[StoredEvent]]:
        """Pages of events in position order; ``position`` moves past each page handed out."""
        self.store._add_waker(self._wake)
        self._channel = self.store._wake_channel(self.wake)
        backoff = 0.05
        try:
            while not self._closed:
                self._wake.clear()  # before reading: a commit during the read wakes us again
                try:
                    if self._channel is not None:
                        try:
                            await self._channel.ensure()
                        except StoreError as exc:  # polling covers for it until it is back
                            _log.warning("subscription wake channel down, polling: %s", exc)
                    page = await self.store.read_all(
                        after=self.position,
                        limit=self.page_size,
                        types=self.types,
                        keep_undecodable=True,
                    )
                except StoreClosed:
                    raise
                except StoreError as exc:
                    self.errors += 1
                    _log.warning("subscription read failed, retrying in %.2fs: %s", backoff, exc)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.poll_interval)
                    continue
                backoff = 0.05
                self.reads += 1
                if page:
                    bad = self._first_undecodable(page)
                    if bad is not None and self.stop_at_undecodable:
                        if bad:
                            self.position = page[bad - 1].position
                            yield page[:bad]
                        error = undecodable_error(page[bad])
                        _log.error("subscription stops at an undecodable event: %s", error)
                        raise error
                    self.position = page[-1].position
                    yield page
                    continue  # more may be waiting
                await self._sleep(self.poll_interval)
        finally:
            # However the iteration ends (closed store, consumer stopped), the LISTEN
            # connection goes with it.
            self.store._remove_waker(self._wake)
            if self._channel is not None:
                channel, self._channel = self._channel, None
                await channel.close()

    def _first_undecodable(self, page: list[StoredEvent]) -> int | None:
        """The index of the first undecodable event of ``page`` (counted), or None."""
        first = None
        for index, stored in enumerate(page):
            if type(stored.event) is UndecodableEvent:
                self.undecodable += 1
                if first is None:
                    first = index
                    if self.stop_at_undecodable:
                        break
        return first

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
