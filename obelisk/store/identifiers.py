"""One rule for the SQL names obelisk builds from configuration and declarations.

Schemas, table prefixes, table and column names, on the event store and the read store
alike, are checked here, once, with one message format: a name that is refused on one
store is refused on the other in the same words.

The rule: lower-case ASCII letters, digits and underscores, starting with a letter or an
underscore (a table prefix: a letter), non-empty, at most a per-kind number of bytes
(room for what obelisk adds), and every name obelisk builds from it at most 63 bytes.
PostgreSQL cuts identifiers (and NOTIFY channel names) longer than 63 bytes without a word,
so two schemas that differ only after byte 63 would silently be one schema: such a name is
refused, never cut. The pattern keeps configuration from ever injecting SQL (names are
quoted as well).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from obelisk.errors import ValidationError

__all__ = ["MAX_IDENTIFIER_BYTES", "check_identifier", "check_length"]

MAX_IDENTIFIER_BYTES: Final = 63
"""PostgreSQL's NAMEDATALEN - 1: the longest identifier it keeps whole."""

_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_PREFIX = re.compile(r"[a-z][a-z0-9_]*")

# kind -> (most bytes of the name itself, its pattern, how its first character is said).
# The caps leave room for what obelisk adds to each: generation and index suffixes to a
# table name, table names to a prefix, ``.<prefix>events`` (the NOTIFY channel) to a schema.
_KINDS: Final[dict[str, tuple[int, re.Pattern[str], str]]] = {
    "schema": (40, _NAME, "a letter or an underscore"),
    "table prefix": (20, _PREFIX, "a letter"),
    "table name": (48, _NAME, "a letter or an underscore"),
    "column name": (48, _NAME, "a letter or an underscore"),
}
_ANY_KIND: Final = (MAX_IDENTIFIER_BYTES, _NAME, "a letter or an underscore")


def check_identifier(kind: str, value: object, *, builds: Iterable[str] = ()) -> str:
    """``value`` if it is a valid ``kind`` name ("schema", "table prefix", "table name",
    "column name") and every name in ``builds`` — the names obelisk makes from it, such as
    the prefixed tables and indexes — fits in 63 bytes; else :class:`ValidationError`
    naming the kind, the value and the rule."""
    most, pattern, first = _KINDS.get(kind, _ANY_KIND)
    if not isinstance(value, str) or len(value) > most or not pattern.fullmatch(value):
        shown = _short(value) if isinstance(value, str) else f"(a {type(value).__name__})"
        raise ValidationError(
            f"{kind} {shown} is refused: a {kind} must be 1 to {most} lower-case ASCII "
            f"letters, digits or underscores, starting with {first}"
        )
    if value.startswith("pg_") and kind == "schema":
        raise ValidationError(
            f"schema {value!r} is refused: names starting with pg_ are reserved by PostgreSQL"
        )
    for name in builds:
        check_length(kind, value, name)
    return value


def check_length(kind: str, value: str, name: str) -> str:
    """``name`` (built by obelisk from the ``kind`` ``value``) if it fits in 63 bytes."""
    size = len(name.encode())
    if size > MAX_IDENTIFIER_BYTES:
        raise ValidationError(
            f"{kind} {_short(value)} is refused: it makes the name {_short(name)} of {size} "
            f"bytes, and PostgreSQL cuts names at {MAX_IDENTIFIER_BYTES} bytes without a word "
            f"(two names alike up to there would be one): shorten the {kind}"
        )
    return name


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:80]}...({len(text)} characters)"
