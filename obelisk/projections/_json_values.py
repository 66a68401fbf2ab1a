"""Values of ``json`` columns, encoded to text once per flush (both databases take text)."""

from __future__ import annotations

from typing import Any

import msgspec

from obelisk._arguments import clip, describe
from obelisk.errors import UnstorableValue
from obelisk.projections.tables import Table

__all__ = ["encode_json_values"]


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
                    values[i] = encode(values[i]).decode()
            out.append(tuple(values))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableValue(
            f"{table.name}.{columns[i]}: {describe(values[i])} cannot be stored as JSON: "
            f"{type(exc).__name__}: {clip(str(exc))}"
        ) from None
    return out
