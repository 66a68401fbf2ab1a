"""Keyset (cursor) pagination over read-model tables — never OFFSET.

``OFFSET n`` makes the database walk past n rows for every page: page 1,000 of a listing
costs a thousand pages. A keyset page asks for the rows *after the last row seen* in the
listing's order, which an index on that order answers in one seek, whatever the page number.

    page = await fetch_page(read_store, Orders.orders, order_by=("customer", "order_id"),
                            where={"customer": "c-42"}, limit=20)
    more = await fetch_page(read_store, Orders.orders, order_by=("customer", "order_id"),
                            where={"customer": "c-42"}, limit=20, after=page.next_cursor)

Declare an :class:`~obelisk.projections.Index` on the equality columns followed by the order
columns (here ``Index("customer", "order_id")``); :func:`keyset_sql` shows the statement so a
test can check its plan with EXPLAIN. Cursors are opaque strings safe in URLs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from obelisk._arguments import check_int, describe
from obelisk.errors import ValidationError
from obelisk.projections.readstore import ReadStore
from obelisk.projections.tables import Table, quote

__all__ = ["KeysetPage", "decode_cursor", "encode_cursor", "fetch_page", "keyset_sql"]

Direction = Literal["asc", "desc"]
MAX_PAGE = 1000


class KeysetPage(msgspec.Struct, frozen=True):
    """One page of rows (dicts by column name) and the cursor of the next (None: last)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(values: Sequence[Any]) -> str:
    """An opaque, URL-safe cursor for the order values of a listing's last row."""
    if not isinstance(values, list | tuple):
        raise ValidationError(f"cursor values must be a list, got {describe(values)}")
    try:
        data = msgspec.json.encode(list(values))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"cursor values {describe(values)} cannot be encoded: {exc}"
        ) from None
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    """The order values inside ``cursor``; ValidationError for anything not made by
    :func:`encode_cursor` for a listing of ``width`` order columns."""
    if not isinstance(cursor, str) or not cursor.isascii():  # base64 is ASCII
        raise ValidationError(f"malformed page cursor {describe(cursor)}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError, RecursionError):
        raise ValidationError(f"malformed page cursor {cursor[:40]!r}") from None
    if not isinstance(values, list) or len(values) != width:
        raise ValidationError(f"page cursor {cursor[:40]!r} does not fit this listing")
    return values


def _columns(what: str, columns: object) -> list[str]:
    """``columns`` as a list of names (a plain str would be taken letter by letter)."""
    if not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns):
        raise ValidationError(f"{what} must be a list of column names, got {describe(columns)}")
    return list(columns)


def _order(table: Table, order_by: Sequence[str]) -> tuple[str, ...]:
    order = _columns("order_by", order_by)
    for column in order:
        if column not in table.columns:
            raise ValidationError(f"{table.name} has no column {column!r} to order by")
    # The key ends every order: rows with equal order values still have one place each.
    order.extend(k for k in table.key if k not in order)
    return tuple(order)


def keyset_sql(
    read_store: ReadStore,
    table: Table,
    *,
    order_by: Sequence[str],
    where: Mapping[str, Any] | None = None,
    direction: Direction = "asc",
    after: bool = False,
    columns: Sequence[str] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The statement of a keyset page, and the order columns it ends in.

    Parameters, in order: the ``where`` values, then (when ``after``) the cursor's values,
    then the limit.
    """
    if not isinstance(table, Table):
        raise ValidationError(f"expected a Table, got {type(table).__name__}")
    if direction not in ("asc", "desc"):
        raise ValidationError(f"direction must be 'asc' or 'desc', got {describe(direction)}")
    if where is not None and not (
        isinstance(where, Mapping) and all(isinstance(c, str) for c in where)
    ):
        raise ValidationError(f"where must be a dict of column values, got {describe(where)}")
    order = _order(table, order_by)
    selected = _columns("columns", columns) if columns is not None else list(table.columns)
    for column in (*selected, *(where or {})):
        if column not in table.columns:
            raise ValidationError(f"{table.name} has no column {column!r}")
    conditions = [f"{quote(c)} = ?" for c in (where or {})]
    if after:
        names = ", ".join(quote(c) for c in order)
        marks = ", ".join("?" for _ in order)
        conditions.append(f"({names}) {'>' if direction == 'asc' else '<'} ({marks})")
    sql = f"SELECT {', '.join(quote(c) for c in selected)} FROM {read_store.qualified(table.name)}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY " + ", ".join(f"{quote(c)} {direction.upper()}" for c in order)
    sql += " LIMIT ?"
    return read_store.dialect.sql(sql), order


async def fetch_page(
    read_store: ReadStore,
    table: Table,
    *,
    order_by: Sequence[str],
    where: Mapping[str, Any] | None = None,
    limit: int = 50,
    after: str | None = None,
    direction: Direction = "asc",
    columns: Sequence[str] | None = None,
) -> KeysetPage:
    """One page of ``table`` (through its view) in ``order_by`` order, after ``after``."""
    check_int("limit", limit, 1, MAX_PAGE)
    sql, order = keyset_sql(
        read_store,
        table,
        order_by=order_by,
        where=where,
        direction=direction,
        after=after is not None,
        columns=columns,
    )
    selected = list(columns) if columns is not None else list(table.columns)
    missing = [c for c in order if c not in selected]
    if missing:
        raise ValidationError(f"the selected columns must include the order columns {missing}")
    params: list[Any] = list((where or {}).values())
    if after is not None:
        params.extend(decode_cursor(after, len(order)))
    params.append(limit + 1)  # one more than asked: is there a next page?
    rows = await read_store.query(sql, *params)
    out = [dict(zip(selected, row, strict=True)) for row in rows[:limit]]
    cursor = None
    if len(rows) > limit and out:
        last = out[-1]
        cursor = encode_cursor([last[c] for c in order])
    return KeysetPage(out, cursor)
