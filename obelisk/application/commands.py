"""Commands: imperative, frozen msgspec structs, validated before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

from obelisk.application._inputs import decode_error, json_bytes, shown
from obelisk.application.retry import RetryPolicy
from obelisk.domain.events import _FrozenStruct
from obelisk.domain.values import check_value_nesting, first_difference, may_nest_deeply
from obelisk.errors import CommandRejected, ValidationError

if TYPE_CHECKING:
    from obelisk.application.unit_of_work import UnitOfWork

__all__ = ["Command", "CommandRegistry", "Handler", "HandlerEntry", "encode_command"]

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
    nests: bool = True  # whether a command's fields can nest past MAX_NESTING


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
            raise ValidationError(f"{command_type.__qualname__} already has a handler")
        entry = HandlerEntry(
            command_type,
            handler,
            retry,
            msgspec.json.Decoder(command_type),
            may_nest_deeply(command_type),
        )
        self._by_type[command_type] = entry
        self._by_name[command_type.command_type] = entry

    def entry_for(self, command: Command) -> HandlerEntry[Any]:
        """The handler of ``command``, after checking its fields against their types."""
        entry = self._by_type.get(type(command))
        if entry is None:
            raise CommandRejected(f"no handler registered for {type(command).__qualname__}")
        cls = type(command)
        if entry.nests:  # a field typed Any (or a recursive struct): the walk is iterative
            check_value_nesting(command, f"a {cls.__qualname__}")
        # msgspec checks types when decoding, not in __init__: a struct built in code
        # with a wrong type (or breaking a Meta constraint) is caught by a round trip.
        try:
            msgspec.convert(msgspec.to_builtins(command), cls)
        except (msgspec.ValidationError, TypeError, UnicodeEncodeError) as exc:
            # (msgspec encodes a refused str for its message: a lone surrogate fails there)
            raise ValidationError(f"invalid {cls.__qualname__}: {exc}") from exc
        except RecursionError as exc:  # a value nested past any limit, yet not seen above
            raise ValidationError(f"a {cls.__qualname__} is nested too deeply") from exc
        return entry

    def decode(self, name: str, payload: bytes | str) -> Command:
        """Decode a JSON command named ``name``; ValidationError if malformed, nested
        deeper than :data:`~obelisk.domain.values.MAX_NESTING` or unknown."""
        entry = self._by_name.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ValidationError(f"unknown command type {shown(name)}")
        what = f"{name} command"
        data = json_bytes(payload, what)
        try:
            return entry.decoder.decode(data)  # type: ignore[no-any-return]
        except (msgspec.DecodeError, RecursionError) as exc:
            raise decode_error(what, exc) from exc

    def names(self) -> list[str]:
        """The wire names of every registered command."""
        return sorted(self._by_name)


def encode_command(command: Command) -> bytes:
    """``command`` as JSON that reads back as written: what a command kept to be sent
    later (a scheduled deadline) is checked when written, not found unreadable when due.
    ValidationError for a value JSON cannot carry (a lone surrogate; NaN, which JSON writes
    as null) or nesting deeper than :data:`~obelisk.domain.values.MAX_NESTING`."""
    cls = type(command)
    if may_nest_deeply(cls):
        check_value_nesting(command, f"a {cls.__qualname__}")
    try:
        data = msgspec.json.encode(command)
        back = msgspec.json.decode(data, type=cls)
    except (msgspec.DecodeError, msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise ValidationError(f"{cls.__qualname__} cannot be written as JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError(f"a {cls.__qualname__} is nested too deeply") from exc
    changed = first_difference(command, back)
    if changed is not None:
        raise ValidationError(
            f"{cls.__qualname__}{changed} would not read back as written from JSON"
        )
    return data
