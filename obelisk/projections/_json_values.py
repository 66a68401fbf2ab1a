"""Values of ``json`` and ``float`` columns, made ready once per flush.

``json`` values are encoded to text (both databases take text). A value that would not read
back as written is refused with UnstorableValue, nothing of the batch written: NaN and
infinity in a ``json`` value (msgspec writes them as ``null``), and NaN in a ``float``
column on SQLite (which stores NaN as NULL; PostgreSQL's double precision keeps it).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from obelisk._arguments import clip, describe
from obelisk.errors import UnstorableValue
from obelisk.projections.tables import Table

__all__ = ["check_float_values", "encode_json_values"]


def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(c for c, kind in table.columns.items() if kind == "json")


def encode_json_values(
    table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Rows with the values of json columns encoded to text; UnstorableValue (nothing
    written) for a value JSON cannot hold: an unknown type, a lone surrogate, nesting
    deeper than msgspec's recursion limit."""
    json_columns = _json_columns(table)
    positions = [i for i, c in enumerate(columns) if c in json_columns]
    if not positions:
        return rows
    encode = msgspec.json.encode
    out = []
    values: list[Any] = []
    i = 0
    try:  # around the loop, not in it: a try costs nothing until something raises
        for row in rows:
            values = list(row)
            for i in positions:
                if values[i] is not None:
                    data = encode(values[i])
                    # null is how msgspec writes NaN and infinity: only then a closer look.
                    if b"null" in data and _non_finite(values[i]):
                        raise ValueError("JSON has no NaN or infinity")
                    values[i] = data.decode()
            out.append(tuple(values))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableValue(
            f"{table.name}.{columns[i]}: {describe(values[i])} cannot be stored as JSON: "
            f"{type(exc).__name__}: {clip(str(exc))}"
        ) from None
    return out


def check_float_values(
    table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """UnstorableValue for a NaN in a ``float`` column of ``rows`` (SQLite would store NULL)."""
    positions = [i for i, c in enumerate(columns) if table.columns.get(c) == "float"]
    if not positions:
        return
    for row in rows:
        for i in positions:
            value = row[i]
            if value != value:  # only NaN is not equal to itself
                raise UnstorableValue(
                    f"{table.name}.{columns[i]}: NaN cannot be stored in a float column on "
                    "SQLite (it would read back as NULL): store None for a missing value"
                )


def _non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity anywhere (nesting is bounded by the
    encoder, which has just encoded it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False
