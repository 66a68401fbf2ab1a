"""Event classes the contract suites append, and a registry that renames one of them.

Their type names start with ``obelisk.testing.`` so they never collide with the events of
the project under test in the global registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from obelisk.domain.events import Event, EventRegistry

__all__ = [
    "AliasRegistry",
    "ContractDeposited",
    "ContractNoted",
    "ContractOpened",
    "ContractRenamedV1",
    "ContractRenamedV2",
]


class ContractOpened(Event):
    """A stream was started (the first event of most contract streams)."""

    event_type = "obelisk.testing.Opened"
    owner: str


class ContractDeposited(Event):
    """An amount was added; the amount doubles as a unique marker in concurrency tests."""

    event_type = "obelisk.testing.Deposited"
    amount: int


class ContractNoted(Event):
    """A free-text note: a third type, for filtering read_all by type."""

    event_type = "obelisk.testing.Noted"
    text: str


class ContractRenamedV1(Event):
    """Schema version 1 of a renamed-holder event: one ``name`` field."""

    event_type = "obelisk.testing.Renamed"
    name: str


class ContractRenamedV2(Event):
    """Schema version 2 of the same event: the name split in two.

    It carries its own type name because the global registry holds one class per name;
    :class:`AliasRegistry` makes a codec read ``obelisk.testing.Renamed`` rows into it,
    the way a deployed v2 class would read rows that v1 wrote.
    """

    event_type = "obelisk.testing.Renamed.v2"
    schema_version = 2
    first: str
    last: str


@ContractRenamedV2.upcaster(1)
def _split_name(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {**payload, "first": first, "last": last}


class AliasRegistry(EventRegistry):
    """A registry where some stored type names resolve to a class named differently.

    Args:
        aliases: stored type name -> class to decode it into.
        fallback: where every other name is looked up.
    """

    def __init__(self, aliases: Mapping[str, type[Event]], fallback: EventRegistry) -> None:
        super().__init__()
        self._aliases = dict(aliases)
        self._fallback = fallback

    def get(self, name: str) -> type[Event] | None:
        """The aliased class for ``name``, else the fallback registry's class."""
        cls = self._aliases.get(name)
        return cls if cls is not None else self._fallback.get(name)
