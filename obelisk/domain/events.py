"""Events: frozen msgspec structs with a stable type name and a schema version.

Metadata (id, stream, version, position, time, correlation) lives in the stored envelope,
never in the user's struct, so an event is only the business fact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgspec

from obelisk.errors import DuplicateEventType

__all__ = ["Event", "EventRegistry", "UndecodableEvent", "Upcaster", "default_registry"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_E = TypeVar("_E", bound="type[Event]")


class EventRegistry:
    """Maps stable type names to event classes, for decoding stored rows."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Event]] = {}

    def register(self, cls: type[Event]) -> None:
        """Register ``cls`` under its ``event_type``; refuse a different class of the same name."""
        name = cls.event_type
        existing = self._by_name.get(name)
        if existing is not None and existing is not cls and not _same_definition(existing, cls):
            raise DuplicateEventType(
                f"event type {name!r} is already {existing.__module__}.{existing.__qualname__}; "
                f"set `event_type = \"...\"` on {cls.__module__}.{cls.__qualname__} to rename it"
            )
        self._by_name[name] = cls

    def get(self, name: str) -> type[Event] | None:
        """The class registered under ``name``, or None."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._by_name)


def _same_definition(a: type, b: type) -> bool:
    # A module executed twice (reload, a doc snippet run again) re-creates its classes;
    # the newer definition replaces the older one instead of being a conflict.
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


default_registry = EventRegistry()


if TYPE_CHECKING:
    # Type checkers do not carry ``frozen`` from a struct base to its subclasses and would
    # reject every user event ("non-frozen dataclass cannot inherit from a frozen one").
    # At run time the base is frozen and msgspec makes every subclass frozen too.
    class _FrozenStruct(msgspec.Struct, kw_only=True):
        pass
else:

    class _KeywordOnlyMeta(msgspec.StructMeta):
        # msgspec applies kw_only per class, not to subclasses; keyword-only fields let
        # a required field follow an optional one and keep call sites readable.
        def __new__(mcls, name, bases, namespace, **kwargs):
            kwargs.setdefault("kw_only", True)
            return super().__new__(mcls, name, bases, namespace, **kwargs)

    class _FrozenStruct(msgspec.Struct, frozen=True, kw_only=True, metaclass=_KeywordOnlyMeta):
        pass


class Event(_FrozenStruct):
    """Base class of domain events.

    Subclasses are frozen msgspec structs. Class attributes:

    * ``event_type`` — the stable name stored with each event (the class name by default);
      set it explicitly to keep the name when the class is renamed or moved.
    * ``schema_version`` — bump it when the payload shape changes, and register an
      upcaster from the previous version with :meth:`upcaster`.
    """

    event_type: ClassVar[str] = "Event"
    schema_version: ClassVar[int] = 1
    upcasters: ClassVar[dict[int, Upcaster]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__
        if not isinstance(cls.event_type, str) or not cls.event_type.isprintable():
            # Stores join name and schema version with a control character.
            raise TypeError(f"{cls.__qualname__}.event_type must be a printable str")
        if not isinstance(cls.schema_version, int) or cls.schema_version < 1:
            raise TypeError(f"{cls.__qualname__}.schema_version must be an int >= 1")
        # Each class gets its own upcaster table; inheriting the parent's would apply a
        # parent's migrations to a child's payloads.
        cls.upcasters = {}
        if "_placeholder" not in cls.__dict__:
            default_registry.register(cls)

    @classmethod
    def upcaster(cls, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning a payload of ``from_version`` into ``from_version + 1``.

        Upcasters run on read, in a chain, for rows stored with an older schema version;
        the stored row is never rewritten.
        """

        def register(fn: Upcaster) -> Upcaster:
            if not 1 <= from_version < cls.schema_version:
                raise ValueError(
                    f"{cls.__qualname__} is at schema version {cls.schema_version}; "
                    f"an upcaster from version {from_version} can never run"
                )
            cls.upcasters[from_version] = fn
            return fn

        return register


class UndecodableEvent(Event):
    """A stored event that cannot be decoded, handed out in its place by a read that asked
    to keep such rows (``read_all(keep_undecodable=True)``), so a follower can dead-letter
    it and go on instead of stopping the whole page.

    Never registered and never written: a store refuses to append one.

    Attributes:
        type_name: the type name stored on the row.
        stored_schema_version: the schema version stored on the row.
        data: the raw payload bytes, as stored.
        error: why it could not be decoded (an unknown type, or the decoder's message).
        unknown_type: True when no registered class has ``type_name`` (the payload may be
            sound: a process that imports the class reads it).
    """

    event_type: ClassVar[str] = "obelisk.UndecodableEvent"
    _placeholder: ClassVar[bool] = True

    type_name: str
    stored_schema_version: int
    data: bytes
    error: str
    unknown_type: bool = False
