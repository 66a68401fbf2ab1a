"""Projection: the declaration of a read model and of the handlers that keep it.

    class Balances(Projection):
        name = "balances"
        version = 1
        accounts = Table("accounts", {"account_id": "text", "balance": "integer"},
                         key="account_id")

        @handles(AccountOpened)
        def opened(self, event: AccountOpened, ctx: Context) -> None:
            ctx.upsert(self.accounts, account_id=ctx.stream_id, balance=0)

        @handles(MoneyDeposited)
        def deposited(self, event: MoneyDeposited, ctx: Context) -> None:
            ctx.add(self.accounts, ctx.stream_id, balance=event.amount)

The handler table is built once per class. The event types a projection handles are all it
reads: the runner asks the database for those types only.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from obelisk._arguments import check_text
from obelisk.domain.events import Event
from obelisk.errors import ValidationError
from obelisk.projections.tables import ChangeSet, Table

if TYPE_CHECKING:
    from obelisk.projections.readstore import ReadTransaction
    from obelisk.store.records import StoredEvent

__all__ = ["Context", "Projection", "handles"]

F = TypeVar("F", bound=Callable[..., Any])
_HANDLES = "__obelisk_handles__"


def handles(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark a projection method as the handler of ``event_types``.

    The method is called as ``handler(event, ctx)``; it may be ``async`` (to run SQL
    through ``ctx``) or plain (to stage changes only — the fastest kind).
    """
    if not event_types:
        raise TypeError("@handles needs at least one event class")
    for event_type in event_types:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"@handles takes Event classes, got {event_type!r}")
        if event_type is Event:
            # Dispatch is by exact class: the base class would match no stored event.
            raise TypeError("@handles takes your event classes, not the Event base class")

    def mark(fn: F) -> F:
        setattr(fn, _HANDLES, (*getattr(fn, _HANDLES, ()), *event_types))
        return fn

    return mark


class Context:
    """What a handler gets besides its event: the envelope, and the batch's writes.

    Staged writes (:meth:`upsert`, :meth:`add`, :meth:`delete`) are merged per key for the
    whole batch and written with the checkpoint in one transaction. SQL run through
    :meth:`execute` / :meth:`fetch` joins the same transaction; staged writes are flushed
    first, so the SQL sees them. Use :meth:`table` for a table's name in this generation.
    """

    __slots__ = ("_changes", "_invalidated", "_names", "_qualify", "_tx", "stored")

    def __init__(
        self,
        tx: ReadTransaction,
        changes: dict[Table, ChangeSet],
        names: dict[Table, str],
        qualify: Callable[[str], str] | None = None,
    ) -> None:
        self._tx = tx
        self._changes = changes
        self._names = names
        # How the read store names a table of its own (schema-qualified on PostgreSQL).
        self._qualify = qualify
        self._invalidated: list[str] = []
        self.stored: StoredEvent

    @property
    def stream_id(self) -> str:
        """The id of the stream (aggregate) the event belongs to."""
        return self.stored.stream_id

    @property
    def position(self) -> int:
        return self.stored.position

    def _changeset(self, table: Table) -> ChangeSet:
        try:
            return self._changes[table]
        except KeyError:
            raise ValidationError(f"table {table.name!r} is not one of this projection's") from None

    def upsert(self, table: Table, **row: Any) -> None:
        """Set the given columns of the row with this key, creating it if missing."""
        self._changeset(table).upsert(row)

    def add(self, table: Table, key: Any, **deltas: Any) -> None:
        """Add ``deltas`` to numeric columns of the row ``key`` (NULL counts as 0), creating
        the row with the deltas as values if missing."""
        self._changeset(table).add(key, deltas)

    def delete(self, table: Table, key: Any) -> None:
        """Delete the row ``key`` (nothing happens if there is none)."""
        self._changeset(table).delete(key)

    def invalidate(self, *tags: str) -> None:
        """Drop cached query results built from ``tags`` once this batch has committed
        (the runner's ``invalidate`` callback, e.g. a :class:`~obelisk.caching.QueryCache`)."""
        for tag in tags:  # checked here, in the handler: after the commit it is too late
            check_text("cache tag", tag, nul=True)
        self._invalidated.extend(tags)

    def table(self, table: Table) -> str:
        """The quoted (qualified) name of ``table``'s storage in the generation being written."""
        try:
            return self._names[table]
        except KeyError:
            raise ValidationError(f"table {table.name!r} is not one of this projection's") from None

    async def _flush(self) -> None:
        await self._tx.flush([(c, self._names[t]) for t, c in self._changes.items()])

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement in the batch's transaction (the database's own placeholders)."""
        await self._flush()
        return await self._tx.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        await self._flush()
        return await self._tx.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        await self._flush()
        return await self._tx.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._flush()
        return await self._tx.fetchval(sql, *args)


Handler = Callable[[Any, Context], Awaitable[None] | None]


class Projection:
    """Base class of projections; see the module docstring for an example.

    Class attributes:
        name: the projection's stable name (its checkpoint and bookkeeping key).
        version: bump it when the handlers or tables change: the runner then rebuilds
            the read model beside the live one and switches to it when it has caught up.
        tables: found automatically (every :class:`Table` class attribute).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = ()
    # False for projections with effects outside their tables (process managers): a
    # rebuild would replay those effects, so it is refused.
    rebuildable: ClassVar[bool] = True
    _handler_names: ClassVar[dict[type[Event], str]] = {}
    _async_handlers: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Event], str] = {}
        tables: dict[str, Table] = {}
        for klass in reversed(cls.__mro__):  # subclasses override their bases
            for attr, value in vars(klass).items():
                if isinstance(value, Table):
                    tables[attr] = value  # by attribute: a subclass's override replaces
                for event_type in getattr(value, _HANDLES, ()):
                    handlers[event_type] = attr
        # Whether a handler is async is the method the attribute resolves to now: an
        # override (decorated or not) may differ from the method that was decorated.
        asynchronous = {
            a for a in handlers.values() if inspect.iscoroutinefunction(getattr(cls, a))
        }
        cls._handler_names = handlers
        cls._async_handlers = frozenset(asynchronous)
        if "tables" not in cls.__dict__:
            cls.tables = tuple(tables.values())
        if "name" in cls.__dict__ and (not isinstance(cls.name, str) or not cls.name):
            raise TypeError(f"{cls.__qualname__}.name must be a non-empty str")
        if not isinstance(cls.version, int) or isinstance(cls.version, bool) or cls.version < 1:
            raise TypeError(f"{cls.__qualname__}.version must be an int >= 1")

    @classmethod
    def event_types(cls) -> list[str]:
        """The stored type names this projection reads (the database filters on them)."""
        return sorted({t.event_type for t in cls._handler_names})

    def dispatch(self) -> dict[type[Event], tuple[Handler, bool]]:
        """Event class -> (bound handler, is it async), built once per runner."""
        return {
            event_type: (getattr(self, attr), attr in self._async_handlers)
            for event_type, attr in self._handler_names.items()
        }

    async def before_batch(self, ctx: Context) -> None:
        """Called at the start of every batch's transaction (override to prepare)."""

    async def after_batch(self, ctx: Context) -> None:
        """Called after a batch's events, before its changes and checkpoint commit."""
