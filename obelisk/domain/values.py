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

import dataclasses
import math
import re
import reprlib
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
    they are equal, NaN counting as equal to NaN), e.g. ``.items[2].price``."""
    if isinstance(written, float) and isinstance(read, float):
        if math.isnan(written) and math.isnan(read):
            return None
        return None if written == read else path or "."
    if isinstance(written, msgspec.Struct):
        if type(read) is not type(written):
            return path or "."
        for name in written.__struct_fields__:
            found = first_difference(getattr(written, name), getattr(read, name), f"{path}.{name}")
            if found is not None:
                return found
        return None
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
    try:
        same = bool(type(written) is type(read) and written == read)
    except Exception:
        same = False
    return None if same else path or "."


_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def value_at(root: object, path: str) -> object:
    """The value at a msgspec error path (``$.items[2].price``) under ``root``, as far as it
    can be followed (a path into a mapping's keys stops at the mapping)."""
    value = root
    for match in _PATH_STEP.finditer(path):
        name, index = match.groups()
        try:
            if name is not None:
                value = value[name] if isinstance(value, dict) else getattr(value, name)
            else:
                value = value[int(index)]  # type: ignore[index]
        except (AttributeError, IndexError, KeyError, TypeError):
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
