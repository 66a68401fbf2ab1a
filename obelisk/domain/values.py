"""Checks on values before they are trusted: nesting depth, and "reads back as written".

msgspec checks types when it *decodes*, never when a struct is built in code, so an event
constructed with a float in an ``int`` field encodes happily and fails only when it is
read back. The store therefore decodes what it is about to write and compares (see
:meth:`obelisk.store.codec.EventCodec.check`); this module holds the pure parts of that
check and of the nesting limit, shared by the stores, the application and HTTP bodies.

Nesting: msgspec recurses once per level of nesting and Python's recursion limit ends it
near 1,000 levels with a ``RecursionError``, whatever the caller was doing. obelisk refuses
anything nested deeper than :data:`MAX_NESTING` first, with a :class:`ValidationError`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import reprlib
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any, Final

import msgspec
import msgspec.inspect

from obelisk.errors import ValidationError

__all__ = [
    "MAX_NESTING",
    "check_json_nesting",
    "check_value_nesting",
    "first_difference",
    "may_nest_deeply",
    "shown",
    "value_at",
]

MAX_NESTING: Final = 128
"""The deepest nesting of lists, objects and structs obelisk accepts (as serde_json does):
far beyond any sane payload, far below Python's recursion limit."""

# A JSON string, or an unterminated one running to the end: possessive (no backtracking)
# and always matching from a quote, so a hostile body of escaped quotes that never closes
# costs one pass, not one pass per quote (quadratic: 47 s for 128 KB).
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.?[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENERS = frozenset(b"[{")


def check_json_nesting(data: bytes | str, what: str, limit: int = MAX_NESTING) -> None:
    """Raise ValidationError when the JSON document ``data`` nests deeper than ``limit``.

    Costs two ``bytes.count`` calls for a document with at most ``limit`` brackets (every
    command body in practice); only a document with more brackets is scanned, strings
    skipped, in C-speed passes and one loop over its brackets.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                raise ValidationError(f"{what} is nested deeper than {limit} levels")
        else:
            depth -= 1


def check_value_nesting(value: object, what: str, limit: int = MAX_NESTING) -> None:
    """Raise ValidationError when ``value`` nests containers deeper than ``limit``.

    Iterative (a recursive walk would hit the very limit it guards); a container met twice
    on one path (a cycle) counts as too deep, since no encoder can write it.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str | bytes | int | float | bool) or item is None:
            continue
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        elif isinstance(item, msgspec.Struct):
            children = [getattr(item, name) for name in item.__struct_fields__]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            # msgspec encodes dataclasses field by field, recursing like into a struct
            children = [getattr(item, field.name) for field in dataclasses.fields(item)]
        else:
            continue
        if depth >= limit:
            raise ValidationError(f"{what} is nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


@cache
def may_nest_deeply(cls: type) -> bool:
    """Whether values of ``cls`` can nest deeper than :data:`MAX_NESTING`: True when its
    type tree holds ``Any``, an unparametrised container or a recursive struct. Other
    types are bounded by their own declaration, so their values need no walk."""
    try:
        info = msgspec.inspect.type_info(cls)
    except Exception:  # a type msgspec cannot describe: walk its values to be safe
        return True
    return _unbounded(info, 0, set())


def _unbounded(info: object, depth: int, path: set[int]) -> bool:
    if depth > MAX_NESTING or isinstance(info, msgspec.inspect.AnyType):
        return True
    if isinstance(info, msgspec.inspect.StructType | msgspec.inspect.DataclassType):
        if id(info.cls) in path:
            return True  # recursive: a tree of itself, as deep as the data
        path = path | {id(info.cls)}
    if isinstance(info, msgspec.inspect.Field):
        return _unbounded(info.type, depth, path)
    if not isinstance(info, msgspec.inspect.Type):
        return False
    nested = depth + 1
    for name in getattr(info, "__struct_fields__", ()):
        value = getattr(info, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, msgspec.inspect.Type | msgspec.inspect.Field) and _unbounded(
                item, nested, path
            ):
                return True
    return False


def first_difference(written: object, read: object, path: str = "") -> str | None:
    """The path of the first value that differs between ``written`` and ``read`` (None when
    they are the same value), e.g. ``.items[2].price``.

    "The same" is what a reader would see: equal and of the same type, except that NaN
    counts as equal to NaN, an int read back as the equal float is the same number, a str
    or int read back as its enum member (StrEnum, IntEnum) is that member, an aware
    datetime read back with another tzinfo is the same instant, and Decimals compare by
    their exact value (``compare_total``: NaN and sNaN included). A list is not a tuple.
    """
    kind = type(written)
    if kind is type(read) or isinstance(read, kind) or isinstance(written, type(read)):
        try:
            if written is read or (kind is type(read) and written == read):
                return None
        except Exception:  # an __eq__ that raises (sNaN): look closer below
            pass
    if isinstance(written, float) and isinstance(read, float):
        if math.isnan(written) and math.isnan(read):
            return None
        return None if written == read else path or "."
    if type(written) is int and type(read) is float:  # an int in a float field
        return None if float(written) == read else path or "."
    if isinstance(written, Decimal) and isinstance(read, Decimal):
        return None if written.compare_total(read) == 0 else path or "."
    if isinstance(written, datetime) and isinstance(read, datetime):
        return None if _same_instant(written, read) else path or "."
    if isinstance(written, Enum) or isinstance(read, Enum):
        # A plain value given for an enum field reads back as its member (or the reverse).
        related = isinstance(read, type(written)) or isinstance(written, type(read))
        return None if related and written == read else path or "."
    if isinstance(written, msgspec.Struct):
        if type(read) is not type(written):
            return path or "."
        return _fields_differ(written, read, written.__struct_fields__, path)
    if dataclasses.is_dataclass(written) and not isinstance(written, type):
        if type(read) is not type(written):
            return path or "."
        names = tuple(f.name for f in dataclasses.fields(written))
        return _fields_differ(written, read, names, path)
    if isinstance(written, list | tuple) and type(read) is type(written):
        assert isinstance(read, list | tuple)
        if len(written) != len(read):
            return path or "."
        for index, (a, b) in enumerate(zip(written, read, strict=True)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(written, dict) and type(read) is dict:
        if written.keys() != read.keys():
            return path or "."
        for key, a in written.items():
            found = first_difference(a, read[key], f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(written, set | frozenset) and type(read) is type(written):
        # Unordered: equal already answered above; NaN members cannot be matched up.
        return None if len(written) == len(read) and _nan_free_equal(written, read) else (
            path or "."
        )
    return path or "."


def _fields_differ(
    written: object, read: object, names: tuple[str, ...], path: str
) -> str | None:
    for name in names:
        found = first_difference(getattr(written, name), getattr(read, name), f"{path}.{name}")
        if found is not None:
            return found
    return None


def _same_instant(a: datetime, b: datetime) -> bool:
    # Aware datetimes with different tzinfo compare unequal in the hour a clock repeats
    # (PEP 495). The instant is what a reader gets back (JSON keeps the offset, MessagePack
    # gives UTC; neither keeps the zone), so compare instants.
    if (a.tzinfo is None) != (b.tzinfo is None):
        return False
    if a.tzinfo is None:
        return a == b
    return a.astimezone(UTC) == b.astimezone(UTC)


def _nan_free_equal(a: set[object] | frozenset[object], b: set[object] | frozenset[object]) -> bool:
    def key(value: object) -> object:
        return "nan" if isinstance(value, float) and math.isnan(value) else value

    try:
        return {key(v) for v in a} == {key(v) for v in b}
    except TypeError:
        return False


_PATH_STEP = re.compile(
    r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
)


def value_at(root: object, path: str) -> object:
    """The value at a path (msgspec's ``$.items[2].price``, or :func:`first_difference`'s
    ``.meta['at']``) under ``root``, as far as it can be followed."""
    value = root
    for match in _PATH_STEP.finditer(path):
        name, index, key = match.groups()
        try:
            if name is not None:
                value = value[name] if isinstance(value, dict) else getattr(value, name)
            elif index is not None:
                value = value[int(index)]  # type: ignore[index]
            else:
                value = value[ast.literal_eval(key)]  # type: ignore[index]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError, SyntaxError):
            break
    return value


def mismatch(name: str, root: object, decode_error: str) -> str:
    """Say which value of ``root`` (called ``name``) msgspec refused when reading it back,
    from its error (``Expected `int`, got `float` - at `$.amount```): ``Paid.amount =
    19.99 does not match its declared type: Expected `int`, got `float```."""
    reason, _, where = decode_error.partition(" - at `$")
    path = where.rstrip("`")
    value = value_at(root, path)
    return f"{name}{path} = {shown(value)} does not match its declared type: {reason}"


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlong = 40


def shown(value: object) -> str:
    """A short repr of ``value`` for an error message: bounded in length and depth (a
    plain repr of a list nested 5,000 deep raises RecursionError, of a 1 MB string is
    1 MB), and never raising, whatever the value's own ``__repr__`` does."""
    try:
        return _SHORT.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
