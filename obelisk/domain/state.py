"""An aggregate's state as bytes, for snapshots: msgspec, no per-class code from the user.

The state of an aggregate is its annotated attributes (``balance: int = 0``), minus ``id``,
``version``, private names and ClassVars. From those annotations a msgspec Struct type is
built once per class; encoding writes the attributes as a MessagePack map, and decoding
checks every value against its declared type, so a snapshot written by an older shape of
the class fails to decode (and is then ignored) instead of producing a wrong aggregate.

A class declares ``state_version`` (default 1) and bumps it when the meaning of its state
changes in a way the types cannot show (a field that now holds cents instead of euros):
snapshots of another version are ignored, never decoded.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, TypeVar

import msgspec
import msgspec.inspect

from obelisk.domain.aggregate import Aggregate
from obelisk.domain.values import (
    check_value_nesting,
    first_difference,
    may_nest_deeply,
    mismatch,
    value_at,
)
from obelisk.errors import ObeliskError

__all__ = ["StateCodec", "StateError", "state_codec"]

_A = TypeVar("_A", bound=Aggregate)
_BASE_FIELDS = frozenset({"id", "version"})


class StateError(ObeliskError):
    """The state could not be encoded or decoded (the message says which class and why)."""


class StateCodec:
    """Encodes and decodes the state of one aggregate class."""

    def __init__(self, cls: type[Aggregate]) -> None:
        self.cls = cls
        self.fields = _state_fields(cls)
        struct = msgspec.defstruct(
            f"{cls.__name__}State", [(name, hint) for name, hint in self.fields.items()]
        )
        _refuse_custom_types(cls, msgspec.inspect.type_info(struct))
        self._decoder = msgspec.msgpack.Decoder(struct)
        self._encoder = msgspec.msgpack.Encoder()
        self._names = tuple(self.fields)
        self._deep = may_nest_deeply(struct)

    @property
    def schema_version(self) -> int:
        """The class's ``state_version``: snapshots of another version are ignored."""
        return self.cls.state_version

    def encode(self, aggregate: Aggregate) -> bytes:
        """The state of ``aggregate`` (which must have no pending events) as bytes.

        Checked before written, as events are: the bytes are decoded back and compared, so
        a state holding a value of another type than declared (a float in an ``int``) is
        refused here rather than stored as a snapshot that could never be loaded.
        """
        name = self.cls.__qualname__
        try:
            state = {field: getattr(aggregate, field) for field in self._names}
            if self._deep:
                check_value_nesting(state, f"the state of {name}")
            data = self._encoder.encode(state)
            back = self._decoder.decode(data)
        except RecursionError:
            raise StateError(f"the state of {name} is nested too deeply to encode") from None
        except msgspec.ValidationError as exc:  # it encoded, but does not read back
            raise StateError(f"cannot snapshot {name}: {mismatch(name, state, str(exc))}") from exc
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # msgspec.ValidationError and obelisk's ValidationError are ValueErrors.
            raise StateError(f"cannot encode the state of {name}: {exc}") from exc
        for field, written in state.items():
            path = first_difference(written, getattr(back, field), f".{field}")
            if path is not None:
                raise StateError(
                    f"cannot snapshot {name}: {name}{path} = {value_at(state, path)!r} would "
                    f"read back as {value_at(back, path)!r}: give it its declared type"
                )
        return data

    def decode(self, aggregate_id: str, version: int, data: bytes) -> Aggregate:
        """A new instance at ``version`` whose state is ``data``."""
        try:
            state = self._decoder.decode(data)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise StateError(f"cannot decode a {self.cls.__qualname__} state: {exc}") from exc
        aggregate = self.cls(aggregate_id)
        for name in self._names:
            setattr(aggregate, name, getattr(state, name))
        aggregate.version = version
        return aggregate


_codecs: dict[type[Aggregate], StateCodec] = {}


def state_codec(cls: type[Aggregate]) -> StateCodec:
    """The codec of ``cls`` (built on first use, then shared).

    Raises:
        StateError: an annotation cannot be resolved or msgspec cannot handle its type.
    """
    codec = _codecs.get(cls)
    if codec is None:
        try:
            codec = StateCodec(cls)
        except StateError:
            raise
        except Exception as exc:  # an unresolvable annotation, a type msgspec refuses
            raise StateError(
                f"{cls.__qualname__} cannot be snapshotted: its state annotations are not "
                f"types msgspec can encode ({exc})"
            ) from exc
        _codecs[cls] = codec
    return codec


def _state_fields(cls: type[Aggregate]) -> dict[str, Any]:
    # Each class of the MRO resolves its annotations in its own module's namespace.
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for name, hint in hints.items():
        if name in _BASE_FIELDS or name.startswith("_"):
            continue
        if hint is ClassVar or typing.get_origin(hint) is ClassVar:
            continue
        fields[name] = hint
    return fields


def _refuse_custom_types(cls: type[Aggregate], info: object, seen: set[int] | None = None) -> None:
    """Raise StateError if any type in the state is one msgspec cannot encode by itself.

    msgspec accepts such a type when the Struct is built and fails only when a value is
    encoded: checking the whole type tree here fails at configuration instead.
    """
    seen = set() if seen is None else seen
    if id(info) in seen:
        return
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.CustomType):
        raise StateError(
            f"{cls.__qualname__} cannot be snapshotted: its state holds a "
            f"{info.cls.__qualname__}, which msgspec cannot encode (use a msgspec Struct, "
            "a dataclass or built-in types)"
        )
    if isinstance(info, msgspec.inspect.Field):
        _refuse_custom_types(cls, info.type, seen)
    elif isinstance(info, msgspec.inspect.Type):
        for name in info.__struct_fields__:
            value = getattr(info, name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, msgspec.inspect.Type | msgspec.inspect.Field):
                    _refuse_custom_types(cls, item, seen)
