"""Event-sourced aggregates: state changes only by applying events.

The event-type -> apply-method table is built once per class, on first use, so
replaying 10,000 events costs one dict lookup per event and no attribute search.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, ParamSpec, TypeVar

from obelisk.domain.events import Event
from obelisk.errors import UnhandledEvent

__all__ = ["Aggregate", "applies", "command"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_A = TypeVar("_A", bound="Aggregate")
_Handler = Callable[[Any, Any], None]
_MUTABLE_DEFAULTS = (list, dict, set, bytearray)


def applies(*event_types: type[Event]) -> Callable[[Callable[[Any, Any], None]], Any]:
    """Mark a method as the apply method for ``event_types`` (instead of the ``apply_`` prefix)."""

    def mark(fn: Callable[[Any, Any], None]) -> Any:
        fn._obelisk_applies = event_types  # type: ignore[attr-defined]
        return fn

    return mark


def command(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Mark an aggregate method as a command.

    A command that raises before recording an event leaves the aggregate untouched and
    usable. One that raises after recording some events leaves state half-changed: the
    instance is marked broken, and a unit of work refuses to commit it.
    """

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        self = args[0]
        assert isinstance(self, Aggregate)
        recorded_before = len(self._pending)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            if len(self._pending) > recorded_before:
                self._broken = True
            raise

    run._obelisk_command = True  # type: ignore[attr-defined]
    return run


class Aggregate:
    """Base class of event-sourced aggregates.

    Subclasses declare state as annotated class attributes with defaults (list, dict and set
    defaults are copied per instance), record events from command methods with
    :meth:`record`, and change state only in apply methods: ``apply_<anything>(self, e: T)``
    with ``T`` an :class:`Event` subclass, or any method decorated with :func:`applies`.
    """

    aggregate_type: ClassVar[str] = "Aggregate"
    state_version: ClassVar[int] = 1
    """Bump when the state's meaning changes in a way its types cannot show: snapshots
    taken under another version are then ignored (the aggregate is replayed instead)."""
    _dispatch: ClassVar[dict[type[Event], _Handler] | None] = None
    _mutable_defaults: ClassVar[tuple[tuple[str, Any], ...]] = ()

    id: str
    version: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate_type" not in cls.__dict__:
            cls.aggregate_type = cls.__name__
        cls._dispatch = None
        mutable: dict[str, Any] = dict(cls._mutable_defaults)
        for name, value in cls.__dict__.items():
            if isinstance(value, _MUTABLE_DEFAULTS) and not name.startswith("__"):
                mutable[name] = value
        cls._mutable_defaults = tuple(mutable.items())

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[Event] = []
        self._broken = False
        # The version of the stored snapshot this instance knows of (0: none).
        self._snapshot_version = 0
        for name, default in self._mutable_defaults:
            setattr(self, name, default.copy())

    # -- creation and replay -------------------------------------------------------------

    @classmethod
    def create(cls: type[_A], id: str, first_event: Event) -> _A:
        """A new aggregate whose first event is ``first_event`` (pending until committed)."""
        aggregate = cls(id)
        aggregate.record(first_event)
        return aggregate

    @classmethod
    def rebuild(cls: type[_A], id: str, events: Iterable[Event], version: int = 0) -> _A:
        """The aggregate after applying stored ``events`` in order, starting at ``version``."""
        aggregate = cls(id)
        aggregate.version = version
        aggregate.replay(events)
        return aggregate

    def replay(self, events: Iterable[Event]) -> None:
        """Apply already-stored events (not queued for commit)."""
        dispatch = type(self)._dispatch or type(self)._build_dispatch()
        applied = 0
        try:
            for event in events:
                dispatch[type(event)](self, event)
                applied += 1
        except KeyError:
            # Either no apply method for this event type, or an apply method raised
            # KeyError itself: tell the two apart before blaming the dispatch table.
            if type(event) not in dispatch:
                self.version += applied
                self._unhandled(event)
            raise
        self.version += applied

    # -- recording -----------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Apply ``event`` to this aggregate and queue it for the next commit."""
        dispatch = type(self)._dispatch or type(self)._build_dispatch()
        handler = dispatch.get(type(event))
        if handler is None:
            self._unhandled(event)
        handler(self, event)
        self._pending.append(event)
        self.version += 1

    @property
    def pending_events(self) -> list[Event]:
        """Events recorded since the last commit, oldest first (a copy)."""
        return list(self._pending)

    @property
    def committed_version(self) -> int:
        """The stream version this instance was loaded at or last committed at."""
        return self.version - len(self._pending)

    @property
    def is_broken(self) -> bool:
        """True when a command raised after recording events: the state is half-changed."""
        return self._broken

    def collect_pending(self) -> list[Event]:
        """Take the pending events (the caller has committed or will commit them)."""
        pending, self._pending = self._pending, []
        return pending

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r} version={self.version}>"

    # -- dispatch table ------------------------------------------------------------------

    def _unhandled(self, event: Event) -> typing.NoReturn:
        raise UnhandledEvent(
            f"{type(self).__name__} has no apply method for {type(event).__qualname__}; "
            f"add `def apply_...(self, e: {type(event).__name__})` or @applies"
        )

    @classmethod
    def _build_dispatch(cls) -> dict[type[Event], _Handler]:
        # Built lazily, once per class: annotations may be forward references that only
        # resolve after the module finished importing.
        table: dict[type[Event], _Handler] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                marked = getattr(member, "_obelisk_applies", None)
                if marked is not None:
                    for event_type in marked:
                        table[event_type] = member
                elif name.startswith("apply_") and callable(member):
                    event_type = _event_parameter_type(klass, member)
                    if event_type is not None:
                        table[event_type] = member
        cls._dispatch = table
        return table

    @classmethod
    def handled_event_types(cls) -> list[type[Event]]:
        """Every event class this aggregate has an apply method for."""
        return list((cls._dispatch or cls._build_dispatch()).keys())


def _event_parameter_type(owner: type, fn: Callable[..., Any]) -> type[Event] | None:
    import sys

    module = sys.modules.get(owner.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    namespace.setdefault(owner.__name__, owner)
    try:
        hints = typing.get_type_hints(fn, globalns=namespace)
    except Exception as exc:
        raise TypeError(
            f"cannot resolve the event type of {owner.__qualname__}.{fn.__name__}: {exc}"
        ) from exc
    hints.pop("return", None)
    for hint in hints.values():
        if isinstance(hint, type) and issubclass(hint, Event):
            return hint
    return None
