"""Event payload codecs: msgspec JSON (default) or MessagePack.

One encoder per codec and one typed decoder per event class, built once and reused:
decoding goes straight from bytes to the struct, with no intermediate dict. Only rows
stored under an older schema version take the dict path, through their upcasters.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import msgspec

from obelisk.domain.events import Event, EventRegistry, default_registry
from obelisk.domain.values import (
    MAX_NESTING,
    check_value_nesting,
    first_difference,
    may_nest_deeply,
    mismatch,
    shown,
    value_at,
)
from obelisk.errors import CorruptEvent, UnknownEventType, ValidationError

__all__ = [
    "TYPE_KEY_SEPARATOR",
    "EventCodec",
    "JsonCodec",
    "MsgPackCodec",
    "codec_by_name",
    "split_type_key",
]

TYPE_KEY_SEPARATOR = "\x1f"
"""Joins a type name and a schema version (> 1) into one *type key*: ``name\x1f2``.

A store can select one text column instead of two (the schema version as an int costs
about a fifth of a 10,000-event read in the driver), and a row whose key has a fast
decoder is known to be at its class's current schema."""


class _Decoder(Protocol):
    def decode(self, buf: bytes, /) -> Any: ...


class EventCodec:
    """Turns events into payload bytes and stored payloads back into events.

    Subclasses pick the wire format. ``name`` is recorded in the store so a database is
    never read with the wrong format.
    """

    name = "abstract"

    def __init__(self, registry: EventRegistry | None = None) -> None:
        self.registry = registry if registry is not None else default_registry
        self._typed: dict[str, tuple[type[Event], _Decoder]] = {}
        self.fast_decoders: dict[str, _Decoder] = {}
        self._untyped = self._make_decoder(None)
        # Per class: the typed decoder that reads an event back before it is written,
        # and whether its values can nest deeper than the limit (only then walked).
        self._checkers: dict[type[Event], tuple[_Decoder, bool]] = {}

    def _make_decoder(self, cls: type[Event] | None) -> _Decoder:
        raise NotImplementedError  # pragma: no cover - each format overrides it

    def encode(self, event: Event) -> bytes:
        """The payload bytes of ``event``."""
        raise NotImplementedError  # pragma: no cover - each format overrides it

    def encode_checked(self, event: Event) -> bytes:
        """The payload bytes of ``event``, once they are known to read back as ``event``.

        msgspec checks types only when decoding, so a struct built in code with a float
        in an ``int`` field, or NaN in a ``float`` field under JSON, encodes without a
        word and could then never be read. Decoding the bytes with the class's typed
        decoder (the one a reader of this schema version uses), and comparing, is exact and
        cheap (0.15-0.4 us for a typical event, measured in W1/W2/W6: docs/benchmarks.md).

        Raises:
            ValidationError: naming the event class, the field and the value; nothing
                has been written.
        """
        cls = type(event)
        checker = self._checkers.get(cls)
        if checker is None:
            checker = self._checkers[cls] = self._checker(cls)
        decoder, deep = checker
        if deep:
            check_value_nesting(event, f"{cls.__qualname__}")
        try:
            data = self.encode(event)
        except RecursionError:
            raise ValidationError(
                f"{cls.__qualname__} is nested deeper than {MAX_NESTING} levels"
            ) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(f"cannot encode {cls.__qualname__}: {exc}") from exc
        try:
            back = decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            raise _refusal(event, exc) from None
        try:
            same = back == event
        except ArithmeticError:  # a Decimal sNaN refuses to be compared: look closer
            same = False
        if not same:
            # Equal but for NaN (which equals nothing), an int in a float field, an instant
            # with another tzinfo... is a faithful copy: first_difference knows which.
            path = first_difference(event, back)
            if path is not None:
                written = value_at(event, path)
                read = value_at(back, path)
                raise ValidationError(
                    f"{cls.__qualname__}{path} = {shown(written)} would read back as "
                    f"{shown(read)}: {_non_finite_hint(written) or 'give it its declared type'}"
                    "; nothing was written"
                )
        return data

    def _checker(self, cls: type[Event]) -> tuple[_Decoder, bool]:
        """The typed decoder of ``cls`` and whether its values can nest past the limit.

        The check is against the writing class, not this codec's registry: rows carry the
        writer's schema version, and a reader whose registry maps the name to a newer class
        upcasts them (or, without the class, reports UnknownEventType), as for any row.
        """
        return self._make_decoder(cls), may_nest_deeply(cls)

    def decode(
        self,
        type_name: str,
        schema_version: int,
        data: bytes,
        stream_id: str,
        version: int,
        position: int,
    ) -> Event:
        """The event stored as ``data``; raises UnknownEventType or CorruptEvent naming the row."""
        entry = self._typed.get(type_name)
        if entry is None:
            entry = self._load(type_name, stream_id, version, position)
        cls, decoder = entry
        try:
            if schema_version == cls.schema_version:
                return decoder.decode(data)  # type: ignore[no-any-return]
            return self._upcast(cls, schema_version, data)
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            TypeError,
            ValueError,
            RecursionError,  # a payload nested past the interpreter's limit
        ) as exc:
            raise CorruptEvent(
                f"cannot decode {type_name} v{schema_version}: {exc}", stream_id, version, position
            ) from exc

    def fast_decoder(self, type_key: str) -> _Decoder | None:
        """The typed decoder for rows of ``type_key`` needing no upcast, or None.

        Fills ``fast_decoders``, which a store's read loop consults directly; rows with no
        fast decoder (unknown type, older schema) go through :meth:`decode`.
        """
        decoder = self.fast_decoders.get(type_key)
        if decoder is not None:
            return decoder
        try:
            type_name, version = split_type_key(type_key)
        except (ValueError, AttributeError):
            return None  # a malformed key: the careful path names the row
        cls = self.registry.get(type_name)
        if cls is None or cls.schema_version != version:
            return None
        entry = self._typed.get(type_name)
        if entry is None:
            entry = self._typed[type_name] = (cls, self._make_decoder(cls))
        self.fast_decoders[type_key] = entry[1]
        return entry[1]

    def _load(
        self, type_name: str, stream_id: str, version: int, position: int
    ) -> tuple[type[Event], _Decoder]:
        cls = self.registry.get(type_name)
        if cls is None:
            raise UnknownEventType(type_name, stream_id, version, position)
        entry = (cls, self._make_decoder(cls))
        self._typed[type_name] = entry
        return entry

    def _upcast(self, cls: type[Event], schema_version: int, data: bytes) -> Event:
        if schema_version > cls.schema_version:
            raise ValueError(
                f"stored with schema version {schema_version}, newer than the code's "
                f"{cls.schema_version}: deploy the newer event class to read it"
            )
        payload = self._untyped.decode(data)
        if not isinstance(payload, dict):
            raise ValueError("payload is not an object")
        for step in range(schema_version, cls.schema_version):
            upcast = cls.upcasters.get(step)
            if upcast is None:
                raise ValueError(f"no upcaster registered from version {step} to {step + 1}")
            try:
                payload = upcast(payload)
            except Exception as exc:
                # A damaged old row must surface as CorruptEvent naming the row, not as
                # whatever the upcaster happened to raise.
                raise ValueError(f"upcaster from version {step} failed: {exc!r}") from exc
        return msgspec.convert(payload, cls)


class JsonCodec(EventCodec):
    """msgspec JSON: readable in the database, the default."""

    name = "json"

    def __init__(self, registry: EventRegistry | None = None) -> None:
        super().__init__(registry)
        self.encode = msgspec.json.Encoder().encode  # type: ignore[method-assign,assignment]

    def _make_decoder(self, cls: type[Event] | None) -> _Decoder:
        return msgspec.json.Decoder(cls) if cls is not None else msgspec.json.Decoder()


class MsgPackCodec(EventCodec):
    """msgspec MessagePack: smaller rows and faster decoding, not human-readable."""

    name = "msgpack"

    def __init__(self, registry: EventRegistry | None = None) -> None:
        super().__init__(registry)
        self.encode = msgspec.msgpack.Encoder().encode  # type: ignore[method-assign,assignment]

    def _make_decoder(self, cls: type[Event] | None) -> _Decoder:
        return msgspec.msgpack.Decoder(cls) if cls is not None else msgspec.msgpack.Decoder()


def _refusal(event: Event, exc: Exception) -> ValidationError:
    """The error for an event whose bytes do not decode back into its class."""
    cls = type(event)
    if isinstance(exc, RecursionError):
        return ValidationError(f"{cls.__qualname__} is nested deeper than {MAX_NESTING} levels")
    message = str(exc)
    path = message.partition(" - at `$")[2].rstrip("`")
    value = value_at(event, path)
    hint = _non_finite_hint(value)
    if hint:
        return ValidationError(
            f"{cls.__qualname__}{path} = {shown(value)} cannot be stored: {hint}"
            "; nothing was written"
        )
    return ValidationError(f"{mismatch(cls.__qualname__, event, message)}; nothing was written")


def _non_finite_hint(value: object) -> str:
    # Only the JSON codec gets here with one: MessagePack keeps NaN and infinity exactly.
    if isinstance(value, float) and not math.isfinite(value):
        return "JSON has no NaN or infinity (use None for a missing number, or the msgpack codec)"
    return ""


def split_type_key(type_key: str) -> tuple[str, int]:
    """The type name and schema version a type key stands for; ValueError for a key no
    store wrote (another writer's row)."""
    type_name, separator, version = type_key.partition(TYPE_KEY_SEPARATOR)
    if not separator:
        return type_name, 1
    if not version.isdigit():
        raise ValueError(f"malformed type key {type_key!r}")
    return type_name, int(version)


def codec_by_name(name: str, registry: EventRegistry | None = None) -> EventCodec:
    """The codec called ``name`` ("json" or "msgpack")."""
    codecs: dict[str, type[EventCodec]] = {"json": JsonCodec, "msgpack": MsgPackCodec}
    try:
        return codecs[name](registry)
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose json or msgpack") from None
