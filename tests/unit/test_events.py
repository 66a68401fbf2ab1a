"""Events: stable type names, schema versions, the registry, immutability."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from obelisk.domain import Event, EventRegistry, default_registry
from obelisk.errors import DuplicateEventType


class PlainNamed(Event):
    value: int


class Renamed(Event):
    event_type = "unit_events.SomethingHappened"
    value: int


class Versioned(Event):
    event_type = "unit_events.Versioned"
    schema_version = 3
    value: int


class VersionedChild(Versioned):
    event_type = "unit_events.VersionedChild"


def test_the_type_name_defaults_to_the_class_name() -> None:
    assert PlainNamed.event_type == "PlainNamed"
    assert default_registry.get("PlainNamed") is PlainNamed


def test_an_explicit_type_name_overrides_the_class_name() -> None:
    assert Renamed.event_type == "unit_events.SomethingHappened"
    assert default_registry.get("unit_events.SomethingHappened") is Renamed
    assert default_registry.get("Renamed") is None


def test_the_schema_version_defaults_to_one() -> None:
    assert PlainNamed.schema_version == 1
    assert Versioned.schema_version == 3


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, None])
def test_a_schema_version_that_is_not_a_positive_int_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="schema_version"):
        type(
            "BadVersion",
            (Event,),
            {"event_type": f"unit_events.BadVersion.{bad!r}", "schema_version": bad},
        )
    # The class was refused before it reached the registry.
    assert f"unit_events.BadVersion.{bad!r}" not in default_registry


def test_an_upcaster_from_a_version_that_can_never_run_is_refused() -> None:
    with pytest.raises(ValueError, match="can never run"):
        Versioned.upcaster(3)(lambda payload: payload)
    with pytest.raises(ValueError, match="can never run"):
        Versioned.upcaster(0)(lambda payload: payload)
    assert 3 not in Versioned.upcasters
    assert 0 not in Versioned.upcasters


def test_a_subclass_does_not_inherit_its_parents_upcasters() -> None:
    @Versioned.upcaster(1)
    def parent_step(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    try:
        assert Versioned.upcasters[1] is parent_step
        assert VersionedChild.upcasters == {}
    finally:
        del Versioned.upcasters[1]


def test_a_fresh_registry_refuses_a_second_class_claiming_a_taken_name() -> None:
    registry = EventRegistry()

    class FirstClaim(Event):
        event_type = "unit_events.FreshRegistryFirst"
        value: int

    class SecondClaim(Event):
        event_type = "unit_events.FreshRegistrySecond"
        value: int

    registry.register(FirstClaim)
    # Point the second class at the first one's name only for this private registry; the
    # global registry already holds both under their own names.
    SecondClaim.event_type = FirstClaim.event_type
    with pytest.raises(DuplicateEventType, match=r"unit_events\.FreshRegistryFirst"):
        registry.register(SecondClaim)
    assert registry.get("unit_events.FreshRegistryFirst") is FirstClaim
    assert registry.names() == ["unit_events.FreshRegistryFirst"]


def test_registering_the_same_class_twice_is_not_a_conflict() -> None:
    registry = EventRegistry()
    registry.register(Renamed)
    registry.register(Renamed)
    assert registry.names() == ["unit_events.SomethingHappened"]
    assert "unit_events.SomethingHappened" in registry


def test_a_redefinition_of_the_same_class_replaces_the_older_one() -> None:
    # A module executed twice re-creates its classes with the same module and qualname.
    registry = EventRegistry()
    first = type("Reloaded", (Event,), {"event_type": "unit_events.Reloaded", "__module__": "m"})
    second = type("Reloaded", (Event,), {"event_type": "unit_events.Reloaded", "__module__": "m"})
    registry.register(first)
    registry.register(second)
    assert registry.get("unit_events.Reloaded") is second


def test_defining_a_second_class_with_a_taken_name_raises_duplicate_event_type() -> None:
    class Original(Event):
        event_type = "unit_events.GloballyTaken"

    with pytest.raises(DuplicateEventType, match=r"unit_events\.GloballyTaken"):

        class Impostor(Event):
            event_type = "unit_events.GloballyTaken"

    assert default_registry.get("unit_events.GloballyTaken") is Original


def test_an_event_is_frozen() -> None:
    event = Renamed(value=1)
    with pytest.raises(AttributeError):
        event.value = 2
    assert event.value == 1


def test_an_event_is_hashable_and_compares_by_value() -> None:
    assert Renamed(value=1) == Renamed(value=1)
    assert Renamed(value=1) != Renamed(value=2)
    assert len({Renamed(value=1), Renamed(value=1)}) == 1


def test_the_type_name_is_not_part_of_the_payload() -> None:
    assert msgspec.to_builtins(Renamed(value=7)) == {"value": 7}


def test_an_event_may_declare_a_required_field_after_an_optional_one() -> None:
    cls = type(
        "OptionalFirst",
        (Event,),
        {
            "event_type": "unit_events.OptionalFirst",
            "__annotations__": {"note": "str", "value": "int"},
            "note": "",
        },
    )
    assert cls(value=1).value == 1
