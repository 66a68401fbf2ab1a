"""The SQL that differs between SQLite and PostgreSQL read stores.

Statements elsewhere are written once with ``?`` placeholders; :meth:`Dialect.sql` turns
them into ``$1, $2, ...`` for PostgreSQL. Table statements are built per table and cached.
"""

from __future__ import annotations

from typing import Final

from obelisk.projections.tables import COLUMN_TYPES, Table, quote

__all__ = ["POSTGRES", "SQLITE", "Dialect"]


class Dialect:
    """How one database spells the statements a read store runs."""

    def __init__(self, name: str, *, numbered: bool, now: str, boolean_true: str) -> None:
        self.name = name
        self.numbered = numbered
        self.now = now  # seconds since the epoch, from the database's clock
        self.true = boolean_true
        self._cache: dict[object, str] = {}

    def sql(self, statement: str) -> str:
        """``statement`` with ``?`` placeholders in this database's style."""
        if not self.numbered:
            return statement
        cached = self._cache.get(statement)
        if cached is None:
            parts = statement.split("?")
            out = [parts[0]]
            for number, part in enumerate(parts[1:], start=1):
                out.append(f"${number}{part}")
            cached = self._cache[statement] = "".join(out)
        return cached

    def column_type(self, kind: str) -> str:
        return COLUMN_TYPES[kind][1 if self.numbered else 0]

    # -- tables ------------------------------------------------------------------------

    def create_table(self, table: Table, physical: str) -> str:
        columns = ", ".join(
            f"{quote(name)} {self.column_type(kind)}" + (" NOT NULL" if name in table.key else "")
            for name, kind in table.columns.items()
        )
        key = ", ".join(quote(k) for k in table.key)
        tail = " WITHOUT ROWID" if not self.numbered else ""
        return f"CREATE TABLE IF NOT EXISTS {physical} ({columns}, PRIMARY KEY ({key})){tail}"

    def create_index(self, table: Table, physical: str, number: int, generation: int) -> str:
        index = table.indexes[number]
        name = quote(table.index_name(generation, number))
        columns = ", ".join(quote(c) for c in index.columns)
        unique = "UNIQUE " if index.unique else ""
        # On PostgreSQL the index lives in its table's schema: its name is not qualified.
        return f"CREATE {unique}INDEX IF NOT EXISTS {name} ON {physical} ({columns})"

    def upsert(self, table: Table, physical: str, columns: tuple[str, ...]) -> str:
        key = (physical, "upsert", columns)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        names = ", ".join(quote(c) for c in columns)
        others = [c for c in columns if c not in table.key]
        conflict = ", ".join(quote(k) for k in table.key)
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in others)
            if others
            else "DO NOTHING"
        )
        if self.numbered:
            source = f"SELECT * FROM unnest({self._arrays(table, columns)})"
        else:
            source = f"VALUES ({', '.join('?' * len(columns))})"
        sql = f"INSERT INTO {physical} ({names}) {source} ON CONFLICT ({conflict}) {action}"
        self._cache[key] = sql
        return sql

    def add(self, table: Table, physical: str, columns: tuple[str, ...]) -> str:
        """Insert the key with the deltas as values, or add the deltas to the row."""
        key = (physical, "add", columns)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        names = ", ".join(quote(c) for c in columns)
        deltas = [c for c in columns if c not in table.key]
        conflict = ", ".join(quote(k) for k in table.key)
        sets = ", ".join(
            f"{quote(c)} = COALESCE(t.{quote(c)}, 0) + excluded.{quote(c)}" for c in deltas
        )
        if self.numbered:
            source = f"SELECT * FROM unnest({self._arrays(table, columns)})"
        else:
            source = f"VALUES ({', '.join('?' * len(columns))})"
        sql = (
            f"INSERT INTO {physical} AS t ({names}) {source} "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
        )
        self._cache[key] = sql
        return sql

    def delete(self, table: Table, physical: str) -> str:
        key = (physical, "delete")
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if self.numbered:
            names = ", ".join(quote(k) for k in table.key)
            sql = (
                f"DELETE FROM {physical} WHERE ({names}) IN "
                f"(SELECT * FROM unnest({self._arrays(table, table.key)}))"
            )
        else:
            sql = f"DELETE FROM {physical} WHERE " + " AND ".join(
                f"{quote(k)} = ?" for k in table.key
            )
        self._cache[key] = sql
        return sql

    def _arrays(self, table: Table, columns: tuple[str, ...]) -> str:
        return ", ".join(
            f"${n}::{self.column_type(table.columns[c])}[]" for n, c in enumerate(columns, 1)
        )


SQLITE: Final = Dialect(
    "sqlite", numbered=False, now="((julianday('now') - 2440587.5) * 86400.0)", boolean_true="1"
)
POSTGRES: Final = Dialect(
    "postgresql",
    numbered=True,
    now="extract(epoch from clock_timestamp())::float8",
    boolean_true="true",
)
