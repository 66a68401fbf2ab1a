"""Up-front checks of the arguments of the read store's entry points.

Values that go straight to the database as parameters need no check here: the adapters
turn what their driver refuses into :class:`~obelisk.errors.UnstorableValue`. These checks
are for the arguments Python works with first (tables iterated, partitions counted, leases
added to the clock, structs taken apart), where a wrong type would escape as TypeError or
AttributeError, or pass silently (a NaN lease that never expires).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from obelisk._arguments import check_int, check_seconds, check_text, describe
from obelisk.errors import ValidationError
from obelisk.projections._read_records import Claim, DeadLetter
from obelisk.projections.tables import ChangeSet, Table

__all__ = [
    "MAX_PARTITIONS",
    "check_changes",
    "check_claim",
    "check_letter",
    "check_name",
    "check_registration",
    "check_tables",
]

MAX_PARTITIONS: Final = 4096
"""The most partitions a projection may be split into (one checkpoint row each)."""


def check_name(name: object) -> str:
    """A projection's name: text both databases hold (PostgreSQL refuses NUL)."""
    return check_text("projection name", name)


def check_tables(tables: object) -> Sequence[Table]:
    """A projection's tables: a list or tuple of :class:`Table`."""
    if not isinstance(tables, list | tuple) or not all(isinstance(t, Table) for t in tables):
        raise ValidationError(f"tables must be a list of Table, got {describe(tables)}")
    return tables


def check_registration(name: object, version: object, partitions: object, tables: object) -> None:
    check_name(name)
    check_int("version", version)
    check_int("partitions", partitions, 1, MAX_PARTITIONS)
    check_tables(tables)


def check_claim(claim: object) -> Claim:
    """A :class:`Claim` whose fields the bookkeeping tables can hold (structs are not
    checked when built in code)."""
    if not isinstance(claim, Claim):
        raise ValidationError(f"expected a Claim, got {type(claim).__name__}")
    check_name(claim.name)
    check_text("claim owner", claim.owner)
    for field in ("generation", "partition", "epoch", "position"):
        check_int(f"claim {field}", getattr(claim, field))
    return claim


def check_letter(letter: object) -> DeadLetter:
    """A :class:`DeadLetter` whose fields the dead-letter table can hold.

    Its ``error`` is made storable rather than refused: it is the text of a handler's
    exception, often quoting the hostile event that caused it, and refusing it would fail
    the very batch that is setting the event aside.
    """
    if not isinstance(letter, DeadLetter):
        raise ValidationError(f"expected a DeadLetter, got {type(letter).__name__}")
    check_name(letter.projection)
    for field in ("stream_id", "event_type"):
        check_text(f"dead letter {field}", getattr(letter, field))
    for field in ("generation", "position", "version"):
        check_int(f"dead letter {field}", getattr(letter, field))
    check_seconds("dead letter recorded_at", letter.recorded_at, zero=True)
    error = letter.error
    if not isinstance(error, str):
        error = describe(error)
    if not error.isascii() or "\x00" in error:
        error = error.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return letter if error is letter.error else msgspec.structs.replace(letter, error=error)


def check_changes(changes: Any) -> Sequence[tuple[ChangeSet, str]]:
    """A flush's argument: (ChangeSet, physical table name) pairs."""
    if not isinstance(changes, list | tuple) or not all(
        isinstance(pair, tuple)
        and len(pair) == 2
        and isinstance(pair[0], ChangeSet)
        and isinstance(pair[1], str)
        for pair in changes
    ):
        raise ValidationError(
            f"changes must be a list of (ChangeSet, table name) pairs, got {describe(changes)}"
        )
    return changes
