"""Commands: imperative, frozen msgspec structs, validated before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

from obelisk.application.retry import RetryPolicy
from obelisk.domain.events import _FrozenStruct
from obelisk.errors import CommandRejected, ValidationError

if TYPE_CHECKING:
    from obelisk.application.unit_of_work import UnitOfWork

__all__ = ["Command", "CommandRegistry", "Handler", "HandlerEntry"]

C = TypeVar("C", bound="Command")
Handler = Callable[["UnitOfWork", C], Awaitable[Any]]


class Command(_FrozenStruct):
    """Base class of commands. ``command_type`` is the name used on the wire."""

    command_type: ClassVar[str] = "Command"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "command_type" not in cls.__dict__:
            cls.command_type = cls.__name__


@dataclass(frozen=True, slots=True)
class HandlerEntry(Generic[C]):
    """A registered handler with its command type and retry policy."""

    command_type: type[C]
    handler: Handler[C]
    retry: RetryPolicy | None
    decoder: msgspec.json.Decoder[C]


class CommandRegistry:
    """Maps command classes (and their wire names) to handlers."""

    def __init__(self) -> None:
        self._by_type: dict[type[Command], HandlerEntry[Any]] = {}
        self._by_name: dict[str, HandlerEntry[Any]] = {}

    def register(
        self, command_type: type[C], handler: Handler[C], *, retry: RetryPolicy | None = None
    ) -> None:
        """Route ``command_type`` to ``handler``; one handler per command type."""
        if not (isinstance(command_type, type) and issubclass(command_type, Command)):
            raise TypeError(f"{command_type!r} is not a Command subclass")
        if command_type in self._by_type:
            raise ValueError(f"{command_type.__qualname__} already has a handler")
        entry = HandlerEntry(command_type, handler, retry, msgspec.json.Decoder(command_type))
        self._by_type[command_type] = entry
        self._by_name[command_type.command_type] = entry

    def entry_for(self, command: Command) -> HandlerEntry[Any]:
        """The handler of ``command``, after checking its fields against their types."""
        entry = self._by_type.get(type(command))
        if entry is None:
            raise CommandRejected(f"no handler registered for {type(command).__qualname__}")
        # msgspec checks types when decoding, not in __init__: a struct built in code
        # with a wrong type (or breaking a Meta constraint) is caught by a round trip.
        try:
            msgspec.convert(msgspec.to_builtins(command), type(command))
        except (msgspec.ValidationError, TypeError) as exc:
            raise ValidationError(f"invalid {type(command).__qualname__}: {exc}") from exc
        return entry

    def decode(self, name: str, payload: bytes) -> Command:
        """Decode a JSON command named ``name``; ValidationError if malformed or unknown."""
        entry = self._by_name.get(name)
        if entry is None:
            raise ValidationError(f"unknown command type {name!r}")
        try:
            return entry.decoder.decode(payload)  # type: ignore[no-any-return]
        except msgspec.DecodeError as exc:
            raise ValidationError(f"invalid {name}: {exc}") from exc

    def names(self) -> list[str]:
        """The wire names of every registered command."""
        return sorted(self._by_name)
