"""Read-model tables: declared once on a projection, written in batches.

A :class:`Table` names its columns (with a small type vocabulary both SQL databases
understand), its primary key and its secondary indexes. The runner creates it, once per
generation of the projection (``<name>__<generation>``), behind a view named ``<name>`` that
queries use; a rebuild fills the next generation beside the live one and swaps the view.

Handlers do not write rows one at a time: they stage changes in a :class:`ChangeSet`, which
merges every change to one key within a batch (an insert and ten increments become one row)
and flushes them as a few set-based statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from obelisk._arguments import check_int, describe
from obelisk.errors import ValidationError
from obelisk.store.identifiers import check_identifier, check_length

__all__ = ["COLUMN_TYPES", "ChangeSet", "Index", "Table", "quote"]

ColumnType = Literal["text", "integer", "float", "boolean", "bytes", "json"]

COLUMN_TYPES: Final[dict[str, tuple[str, str]]] = {
    # declared type: (SQLite type, PostgreSQL type)
    "text": ("TEXT", "text"),
    "integer": ("INTEGER", "bigint"),
    "float": ("REAL", "double precision"),
    "boolean": ("INTEGER", "boolean"),
    "bytes": ("BLOB", "bytea"),
    "json": ("TEXT", "jsonb"),
}
"""The column types a table may declare, and what each is in SQLite and PostgreSQL."""


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (names are checked at declaration already)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Index:
    """A secondary index on ``columns``, in order (``unique`` for a unique one).

    Declare one for every list query a read model serves: keyset pagination over
    ``(owner, account_id)`` needs an index on exactly those columns.
    """

    columns: tuple[str, ...]
    unique: bool = False

    def __init__(self, *columns: str, unique: bool = False) -> None:
        if not columns:
            raise ValidationError("an index needs at least one column")
        object.__setattr__(self, "columns", tuple(columns))
        object.__setattr__(self, "unique", unique)


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity
class Table:
    """A read-model table a projection owns.

    Args:
        name: the name queries use (a view over the live generation's table).
        columns: column name -> type (``text``, ``integer``, ``float``, ``boolean``,
            ``bytes``, ``json``). Every column but the key may be NULL.
        key: the primary key column, or a tuple of columns.
        indexes: secondary indexes (:class:`Index`), built after a rebuild's bulk load.
    """

    name: str
    columns: Mapping[str, ColumnType]
    key: tuple[str, ...]
    indexes: tuple[Index, ...] = field(default=())

    def __init__(
        self,
        name: str,
        columns: Mapping[str, ColumnType],
        *,
        key: str | Sequence[str],
        indexes: Iterable[Index] = (),
    ) -> None:
        # At most 48 bytes: generation and index suffixes fit in 63 (checked again on
        # the names made, see physical and index_name).
        check_identifier("table name", name)
        if "__" in name:
            raise ValidationError(f"table name {name!r} may not contain '__' (generations use it)")
        if not columns:
            raise ValidationError(f"table {name!r} needs columns")
        for column, kind in columns.items():
            check_identifier("column name", column)
            if kind not in COLUMN_TYPES:
                raise ValidationError(
                    f"column {name}.{column} has type {kind!r}; use one of "
                    + ", ".join(sorted(COLUMN_TYPES))
                )
        keys = (key,) if isinstance(key, str) else tuple(key)
        indexes = tuple(indexes)
        for column in (*keys, *(c for index in indexes for c in index.columns)):
            if column not in columns:
                raise ValidationError(f"table {name!r} has no column {column!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "columns", dict(columns))
        object.__setattr__(self, "key", keys)
        object.__setattr__(self, "indexes", indexes)

    def physical(self, generation: int) -> str:
        """The name of this table's storage in ``generation``."""
        check_int("generation", generation, 1)
        return check_length("table name", self.name, f"{self.name}__{generation}")

    def index_name(self, generation: int, number: int) -> str:
        check_int("generation", generation, 1)
        return check_length("table name", self.name, f"{self.name}__{generation}_ix{number}")


# -- staged changes --------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


UPSERT: Final = 1  # set the given columns, creating the row if missing
REPLACE: Final = 2  # the row was deleted earlier in the batch: delete, then insert
DELETE: Final = 3
ADD: Final = 4  # only increments: add to the columns, creating the row if missing


class _Change:
    __slots__ = ("deltas", "kind", "row")

    def __init__(self, kind: int, row: dict[str, Any], deltas: dict[str, Any]) -> None:
        self.kind = kind
        self.row = row
        self.deltas = deltas


class ChangeSet:
    """The changes a batch makes to one table, merged per key.

    Later changes to a key fold into earlier ones, so a flush writes each key once: an
    upsert followed by increments is one upsert with the sums; a delete followed by an
    upsert replaces the row; anything followed by a delete is a delete.
    """

    __slots__ = ("_changes", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        self._changes: dict[Any, _Change] = {}

    def __len__(self) -> int:
        return len(self._changes)

    def _key_of(self, row: Mapping[str, Any]) -> Any:
        keys = self.table.key
        try:
            key = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
        except KeyError as exc:
            raise ValidationError(
                f"a row of {self.table.name} needs its key column {exc.args[0]!r}"
            ) from None
        except TypeError:
            raise ValidationError(
                f"a row of {self.table.name} must be a dict with a hashable key, "
                f"got {describe(row)}"
            ) from None
        return key

    def _key_row(self, key: Any) -> dict[str, Any]:
        keys = self.table.key
        if len(keys) > 1 and (not isinstance(key, tuple) or len(key) != len(keys)):
            raise ValidationError(
                f"the key of {self.table.name} is a tuple {keys!r}, got {describe(key)}"
            )
        try:
            hash(key)
        except TypeError:
            raise ValidationError(
                f"a key of {self.table.name} must be hashable (a str, an int, a tuple of "
                f"them), got {describe(key)}"
            ) from None
        return {keys[0]: key} if len(keys) == 1 else dict(zip(keys, key, strict=True))

    def _check_columns(self, names: Iterable[str]) -> None:
        columns = self.table.columns
        for name in names:
            if name not in columns:
                raise ValidationError(f"{self.table.name} has no column {describe(name)}")

    def upsert(self, row: dict[str, Any]) -> None:
        key = self._key_of(row)
        try:
            change = self._changes.get(key)
        except TypeError:  # an unhashable key (a list): refused here, not as a TypeError
            raise ValidationError(
                f"a row of {self.table.name} must be a dict with a hashable key, "
                f"got {describe(row)}"
            ) from None
        if change is None:
            self._check_columns(row)
            self._changes[key] = _Change(UPSERT, dict(row), {})
        elif change.kind == DELETE:
            self._check_columns(row)
            self._changes[key] = _Change(REPLACE, dict(row), {})
        elif change.kind == ADD:
            # The earlier increments are overwritten where this sets the column.
            self._check_columns(row)
            deltas = {c: d for c, d in change.deltas.items() if c not in row}
            self._changes[key] = _Change(UPSERT, dict(row), deltas)
        else:
            self._check_columns(row)
            change.row.update(row)
            if change.deltas:
                for column in row:
                    change.deltas.pop(column, None)

    def add(self, key: Any, deltas: Mapping[str, Any]) -> None:
        try:
            change = self._changes.get(key)
        except TypeError:  # an unhashable key (a list): say what a key must be
            self._key_row(key)
            raise
        if type(deltas) is not dict and not isinstance(deltas, Mapping):  # ABC check: rare
            raise ValidationError(f"deltas must be a dict of columns, got {describe(deltas)}")
        for column, delta in deltas.items():
            if column in self.table.key:
                raise ValidationError(
                    f"{self.table.name} key column {column!r} cannot be incremented"
                )
            # Exact types first (the common case costs two identity checks); a bool or a
            # str would fail later, merged with another increment, as a TypeError.
            if type(delta) is not int and type(delta) is not float and not _is_number(delta):
                raise ValidationError(
                    f"{self.table.name}.{describe(column)} increment must be a number, "
                    f"got {describe(delta)}"
                )
        if change is None:
            self._check_columns(deltas)
            row = self._key_row(key)  # a malformed key fails here, not at the flush
            if not deltas:  # nothing to add: still create the row when missing
                self._changes[key] = _Change(UPSERT, row, {})
            else:
                self._changes[key] = _Change(ADD, {}, dict(deltas))
            return
        if change.kind == DELETE:
            self._check_columns(deltas)
            row = self._key_row(key)
            row.update(deltas)
            self._changes[key] = _Change(REPLACE, row, {})
            return
        row = change.row
        pending = change.deltas
        for column, delta in deltas.items():
            if column in row:
                value = row[column]
                row[column] = delta if value is None else value + delta
            elif column in pending:
                pending[column] += delta
            else:
                if column not in self.table.columns:
                    raise ValidationError(f"{self.table.name} has no column {describe(column)}")
                pending[column] = delta

    def delete(self, key: Any) -> None:
        self._key_row(key)
        self._changes[key] = _Change(DELETE, {}, {})

    def clear(self) -> None:
        self._changes.clear()

    def plan(
        self,
    ) -> tuple[
        list[Any],
        list[tuple[tuple[str, ...], list[tuple[Any, ...]]]],
        list[tuple[tuple[str, ...], list[tuple[Any, ...]]]],
    ]:
        """What a flush runs: keys to delete, then rows to upsert and increments to add,
        each grouped by the columns they set (one statement per group)."""
        deletes: list[Any] = []
        upserts: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        adds: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        keys = self.table.key
        single = len(keys) == 1
        for key, change in self._changes.items():
            kind = change.kind
            if kind != ADD:
                if kind != UPSERT:  # DELETE or REPLACE
                    deletes.append(key)
                if kind != DELETE:  # UPSERT or REPLACE
                    row = change.row
                    group = upserts.get(columns := tuple(row))
                    if group is None:
                        group = upserts[columns] = []
                    group.append(tuple(row.values()))
            deltas = change.deltas
            if deltas:
                columns = (*keys, *deltas)
                group = adds.get(columns)
                if group is None:
                    group = adds[columns] = []
                if single:
                    group.append((key, *deltas.values()))
                else:
                    group.append((*key, *deltas.values()))
        return deletes, list(upserts.items()), list(adds.items())
