"""Codecs: round trips, errors that name the stored row, upcasting on read."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from obelisk.domain import Event, EventRegistry
from obelisk.errors import CorruptEvent, UnknownEventType
from obelisk.store import EventCodec, JsonCodec, MsgPackCodec
from obelisk.store.codec import codec_by_name


class Shipped(Event):
    event_type = "unit_codec.Shipped"
    order_id: str
    items: list[str]
    weight_grams: int
    express: bool = False
    note: str | None = None


class Renamed(Event):
    """v1 ``{"name"}``, v2 ``{"full_name"}``, v3 ``{"full_name", "source"}``."""

    event_type = "unit_codec.Renamed"
    schema_version = 3
    full_name: str
    source: str


@Renamed.upcaster(1)
def _renamed_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": payload["name"]}


@Renamed.upcaster(2)
def _renamed_v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "source": "migrated"}


class HalfMigrated(Event):
    """At v3 with only the v2 -> v3 upcaster: a v1 row cannot be read."""

    event_type = "unit_codec.HalfMigrated"
    schema_version = 3
    value: int


@HalfMigrated.upcaster(2)
def _half_v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def _registry(*classes: type[Event]) -> EventRegistry:
    registry = EventRegistry()
    for cls in classes:
        registry.register(cls)
    return registry


@pytest.fixture(params=["json", "msgpack"])
def codec(request: pytest.FixtureRequest) -> EventCodec:
    registry = _registry(Shipped, Renamed, HalfMigrated)
    return JsonCodec(registry) if request.param == "json" else MsgPackCodec(registry)


def _raw(codec: EventCodec, payload: dict[str, Any]) -> bytes:
    """Bytes of an arbitrary payload in the codec's wire format (an old row, say)."""
    if codec.name == "json":
        return msgspec.json.encode(payload)
    return msgspec.msgpack.encode(payload)


def test_an_event_survives_a_round_trip(codec: EventCodec) -> None:
    event = Shipped(order_id="o-1", items=["a", "b"], weight_grams=1200, express=True, note="é")
    data = codec.encode(event)
    assert isinstance(data, bytes)
    decoded = codec.decode(Shipped.event_type, Shipped.schema_version, data, "s", 1, 1)
    assert decoded == event
    assert type(decoded) is Shipped


def test_optional_fields_left_at_their_defaults_survive_a_round_trip(codec: EventCodec) -> None:
    event = Shipped(order_id="o-2", items=[], weight_grams=0)
    decoded = codec.decode("unit_codec.Shipped", 1, codec.encode(event), "s", 1, 1)
    assert decoded == event


def test_the_json_codec_writes_readable_json() -> None:
    data = JsonCodec(_registry(Shipped)).encode(Shipped(order_id="o", items=[], weight_grams=1))
    assert msgspec.json.decode(data) == {
        "order_id": "o",
        "items": [],
        "weight_grams": 1,
        "express": False,
        "note": None,
    }


def test_the_msgpack_codec_writes_msgpack() -> None:
    data = MsgPackCodec(_registry(Shipped)).encode(Shipped(order_id="o", items=[], weight_grams=1))
    assert msgspec.msgpack.decode(data)["order_id"] == "o"


def test_an_unknown_type_raises_unknown_event_type_naming_the_row(codec: EventCodec) -> None:
    with pytest.raises(UnknownEventType) as info:
        codec.decode("unit_codec.NeverDefined", 1, b"{}", "order-7", 3, 42)
    error = info.value
    assert (error.type_name, error.stream_id, error.version, error.position) == (
        "unit_codec.NeverDefined",
        "order-7",
        3,
        42,
    )
    message = str(error)
    assert "unit_codec.NeverDefined" in message
    assert "'order-7'" in message
    assert "version 3" in message
    assert "position 42" in message


def test_a_type_registered_globally_but_not_in_the_codecs_registry_is_unknown() -> None:
    codec = JsonCodec(EventRegistry())
    data = codec.encode(Shipped(order_id="o", items=[], weight_grams=1))
    with pytest.raises(UnknownEventType):
        codec.decode("unit_codec.Shipped", 1, data, "s", 1, 1)


@pytest.mark.parametrize(
    "data",
    [b"\xff\x00", b"", b"\x00\x01\x02garbage"],
    ids=["ff00", "empty", "garbage"],
)
def test_corrupt_bytes_raise_corrupt_event_naming_the_row(codec: EventCodec, data: bytes) -> None:
    with pytest.raises(CorruptEvent) as info:
        codec.decode("unit_codec.Shipped", 1, data, "order-8", 5, 77)
    error = info.value
    assert (error.stream_id, error.version, error.position) == ("order-8", 5, 77)
    message = str(error)
    assert "unit_codec.Shipped" in message
    assert "'order-8'" in message
    assert "version 5" in message
    assert "position 77" in message
    assert isinstance(error.__cause__, msgspec.DecodeError)


def test_a_payload_of_the_wrong_shape_raises_corrupt_event(codec: EventCodec) -> None:
    data = _raw(codec, {"order_id": 5, "items": "nope"})
    with pytest.raises(CorruptEvent) as info:
        codec.decode("unit_codec.Shipped", 1, data, "order-9", 1, 2)
    assert (info.value.stream_id, info.value.version, info.value.position) == ("order-9", 1, 2)


def test_a_decode_failure_does_not_poison_later_decodes(codec: EventCodec) -> None:
    with pytest.raises(CorruptEvent):
        codec.decode("unit_codec.Shipped", 1, b"\xff\x00", "s", 1, 1)
    event = Shipped(order_id="o", items=["x"], weight_grams=3)
    assert codec.decode("unit_codec.Shipped", 1, codec.encode(event), "s", 2, 2) == event


def test_the_upcaster_chain_turns_a_v1_row_into_the_current_event(codec: EventCodec) -> None:
    data = _raw(codec, {"name": "Ada Lovelace"})
    decoded = codec.decode("unit_codec.Renamed", 1, data, "person-1", 1, 1)
    assert decoded == Renamed(full_name="Ada Lovelace", source="migrated")


def test_a_v2_row_runs_only_the_remaining_upcaster(codec: EventCodec) -> None:
    data = _raw(codec, {"full_name": "Grace Hopper"})
    decoded = codec.decode("unit_codec.Renamed", 2, data, "person-2", 1, 1)
    assert decoded == Renamed(full_name="Grace Hopper", source="migrated")


def test_a_current_version_row_is_not_upcast(codec: EventCodec) -> None:
    event = Renamed(full_name="Alan Turing", source="typed")
    decoded = codec.decode("unit_codec.Renamed", 3, codec.encode(event), "person-3", 1, 1)
    assert decoded == event


def test_a_missing_upcaster_raises_corrupt_event_naming_the_gap(codec: EventCodec) -> None:
    data = _raw(codec, {"value": 1})
    with pytest.raises(CorruptEvent, match="no upcaster registered from version 1") as info:
        codec.decode("unit_codec.HalfMigrated", 1, data, "half-1", 4, 9)
    assert (info.value.stream_id, info.value.version, info.value.position) == ("half-1", 4, 9)
    # The v2 row has a complete chain and decodes.
    assert codec.decode("unit_codec.HalfMigrated", 2, data, "half-1", 5, 10) == HalfMigrated(
        value=1
    )


def test_a_row_from_a_newer_schema_version_raises_corrupt_event(codec: EventCodec) -> None:
    data = _raw(codec, {"full_name": "From The Future", "source": "v4"})
    with pytest.raises(CorruptEvent, match="newer than the code") as info:
        codec.decode("unit_codec.Renamed", 4, data, "person-4", 2, 3)
    assert (info.value.stream_id, info.value.version, info.value.position) == ("person-4", 2, 3)


def test_an_old_row_whose_payload_is_not_an_object_raises_corrupt_event(
    codec: EventCodec,
) -> None:
    with pytest.raises(CorruptEvent, match="not an object"):
        codec.decode("unit_codec.Renamed", 1, _raw(codec, [1, 2]), "person-5", 1, 1)  # type: ignore[arg-type]


def test_an_upcast_payload_that_does_not_fit_the_class_raises_corrupt_event(
    codec: EventCodec,
) -> None:
    # The v1 -> v2 step needs "name"; a v2 row missing "full_name" reaches convert() broken.
    with pytest.raises(CorruptEvent):
        codec.decode("unit_codec.Renamed", 2, _raw(codec, {"wrong": 1}), "person-6", 1, 1)


def test_an_old_row_an_upcaster_cannot_read_raises_corrupt_event(codec: EventCodec) -> None:
    # The v1 -> v2 upcaster reads payload["name"]; this damaged v1 row has no such key.
    with pytest.raises(CorruptEvent) as info:
        codec.decode("unit_codec.Renamed", 1, _raw(codec, {"wrong": 1}), "person-7", 1, 8)
    assert (info.value.stream_id, info.value.version, info.value.position) == ("person-7", 1, 8)


@pytest.mark.parametrize(("name", "cls"), [("json", JsonCodec), ("msgpack", MsgPackCodec)])
def test_codec_by_name_builds_the_named_codec(name: str, cls: type[EventCodec]) -> None:
    registry = EventRegistry()
    codec = codec_by_name(name, registry)
    assert type(codec) is cls
    assert codec.name == name
    assert codec.registry is registry


@pytest.mark.parametrize("name", ["xml", "JSON", "", "pickle"])
def test_codec_by_name_refuses_an_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        codec_by_name(name)
