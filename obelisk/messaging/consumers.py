"""Consumers: a service's message handlers, by group, run by ``obelisk worker``.

    consumers = Consumers("redis://localhost:6379/0", read_store="sqlite:///read.db",
                          app=app)

    @consumers.on(MoneyDeposited, group="receipts")
    async def send_receipt(event: MoneyDeposited, ctx: MessageContext) -> None:
        await mailer.send(ctx.message.key, event.amount)       # slow work, off the command path

Each group is one :class:`~obelisk.messaging.worker.MessageWorker` consuming the relay's
topic; a group's handlers are picked by event type (events of other types are acknowledged
and skipped). With a read store, each group handles through an
:class:`~obelisk.messaging.inbox.Inbox` (``ctx.tx`` is the transaction). ``obelisk worker
module:consumers`` runs them all until SIGINT/SIGTERM, then stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from obelisk.domain.events import Event
from obelisk.errors import ValidationError
from obelisk.messaging.broker import Broker
from obelisk.messaging.inbox import Inbox
from obelisk.messaging.message import validate_topic
from obelisk.messaging.worker import Backoff, MessageContext, MessageWorker
from obelisk.projections.readstore import ReadStore

if TYPE_CHECKING:
    from obelisk.application.app import Application

__all__ = ["Consumers"]

E = TypeVar("E", bound=Event)
EventHandler = Callable[[Any, MessageContext], Awaitable[None]]


@dataclass
class _Group:
    name: str
    topic: str
    inbox: bool
    concurrency: int
    max_attempts: int
    backoff: Backoff | None
    handlers: dict[type[Event], EventHandler] = field(default_factory=dict)


class Consumers:
    """A set of message handlers by consumer group; see the module docstring.

    Args:
        broker: a Broker or URL (``redis://``, ``nats://``, ``memory://``).
        read_store: a ReadStore or URL for the groups' inboxes (None: no inbox).
        app: an Application the handlers use (opened and closed with the consumers).
        topic: the default topic (the relay's).
    """

    def __init__(
        self,
        broker: str | Broker,
        *,
        read_store: str | ReadStore | None = None,
        app: Application | None = None,
        topic: str = "events",
    ) -> None:
        self._broker_spec = broker
        self._read_spec = read_store
        self.app = app
        self.topic = validate_topic(topic)
        self.groups: dict[str, _Group] = {}
        self.workers: list[MessageWorker] = []
        self._stopping = asyncio.Event()

    def on(
        self,
        *event_types: type[Event],
        group: str,
        topic: str | None = None,
        inbox: bool = True,
        concurrency: int = 16,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
    ) -> Callable[[EventHandler], EventHandler]:
        """Register ``async def handler(event, ctx)`` for ``event_types`` in ``group``."""
        if not event_types:
            raise ValidationError("on() needs at least one event class")
        validate_topic(group)
        found = self.groups.get(group)
        if found is None:
            found = self.groups[group] = _Group(
                group, topic or self.topic, inbox, concurrency, max_attempts, backoff
            )
        elif topic is not None and topic != found.topic:
            raise ValidationError(f"group {group!r} already consumes {found.topic!r}")

        def register(fn: EventHandler) -> EventHandler:
            for event_type in event_types:
                if event_type in found.handlers:
                    raise ValidationError(f"{event_type.__name__} has a handler in {group!r}")
                found.handlers[event_type] = fn
            return fn

        return register

    def stop(self) -> None:
        """Stop every group's worker after the messages in progress."""
        self._stopping.set()
        for worker in self.workers:
            worker.stop()

    async def run(self) -> None:
        """Open what needs opening, run one worker per group until :meth:`stop`."""
        from obelisk.messaging import broker_from_url
        from obelisk.projections import read_store_from_url

        if not self.groups:
            raise ValidationError("no handlers registered")
        broker = (
            broker_from_url(self._broker_spec)
            if isinstance(self._broker_spec, str)
            else self._broker_spec
        )
        read_store = (
            read_store_from_url(self._read_spec)
            if isinstance(self._read_spec, str)
            else self._read_spec
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(broker)
            if read_store is not None:
                await stack.enter_async_context(read_store)
            if self.app is not None:
                await stack.enter_async_context(self.app)
            self.workers = [self._worker(broker, read_store, g) for g in self.groups.values()]
            if self._stopping.is_set():
                return
            await asyncio.gather(*(worker.run() for worker in self.workers))

    def _worker(self, broker: Broker, read_store: ReadStore | None, group: _Group) -> MessageWorker:
        handlers = dict(group.handlers)

        async def dispatch(ctx: MessageContext) -> None:
            event = ctx.event
            handler = handlers.get(type(event)) if event is not None else None
            if handler is not None:
                await handler(event, ctx)
            # Other types (and non-event messages): nothing to do, acknowledged.

        inbox = Inbox(read_store) if group.inbox and read_store is not None else None
        return MessageWorker(
            broker,
            dispatch,
            group=group.name,
            topic=group.topic,
            concurrency=group.concurrency,
            max_attempts=group.max_attempts,
            backoff=group.backoff,
            inbox=inbox,
        )
