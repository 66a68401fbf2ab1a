"""Read-model tables and the ChangeSet that stages a batch's writes to them.

The property that matters: flushing the merged ChangeSet leaves a real table exactly as
applying every change one at a time, in order, would have. The reference here is naive on
purpose — one plain SQL statement (or two) per change on an in-memory SQLite database —
and shares no SQL with the read stores.

:func:`check_against_reference` is the whole property, run against any open read store;
``tests/integration/test_projection_changes_pg.py`` runs it on PostgreSQL.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.errors import ValidationError
from obelisk.projections import Index, Table
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.projections.readstore import ReadStore
from obelisk.projections.tables import ChangeSet

# -- the tables the property runs on --------------------------------------------------------

SINGLE = Table(
    "prop_single",
    {"k": "text", "a": "integer", "b": "integer", "c": "text"},
    key="k",
)
COMPOSITE = Table(
    "prop_composite",
    {"k1": "text", "a": "integer", "k2": "integer", "b": "integer", "c": "text"},
    key=("k1", "k2"),
)
TABLES = {"single": SINGLE, "composite": COMPOSITE}
KEYS: dict[str, list[Any]] = {
    "single": ["x", "y", "z"],
    "composite": [("x", 1), ("x", 2), ("y", 1)],
}
NUMERIC = ("a", "b")  # the columns increments go to

_generations = itertools.count(1)  # a fresh physical table for every example

Step = tuple[str, Any, dict[str, Any], bool]  # (kind, key, row or deltas, flush after it)

# Mostly no flush between changes: the merging is what is under test.
_flush = st.sampled_from([False, False, False, False, False, True])


def _key_row(table: Table, key: Any) -> dict[str, Any]:
    if len(table.key) == 1:
        return {table.key[0]: key}
    return dict(zip(table.key, key, strict=True))


def _value(column: str) -> st.SearchStrategy[Any]:
    if column in NUMERIC:
        return st.none() | st.integers(-1000, 1000)
    return st.none() | st.sampled_from(["", "p", "q"])


@st.composite
def _full_row(draw: st.DrawFn, shape: str, key: Any) -> dict[str, Any]:
    table = TABLES[shape]
    row = _key_row(table, key)
    for column in table.columns:
        if column not in table.key:
            row[column] = draw(_value(column))
    return row


@st.composite
def _upsert(draw: st.DrawFn, shape: str) -> tuple[str, Any, dict[str, Any], bool]:
    table = TABLES[shape]
    key = draw(st.sampled_from(KEYS[shape]))
    others = [c for c in table.columns if c not in table.key]
    chosen = draw(st.lists(st.sampled_from(others), unique=True))
    items = list(_key_row(table, key).items()) + [(c, draw(_value(c))) for c in chosen]
    # The order of a row's columns is the caller's: the flush groups rows by it.
    row = dict(draw(st.permutations(items)))
    return ("upsert", key, row, draw(_flush))


@st.composite
def _add(draw: st.DrawFn, shape: str) -> tuple[str, Any, dict[str, Any], bool]:
    key = draw(st.sampled_from(KEYS[shape]))
    columns = draw(st.lists(st.sampled_from(NUMERIC), min_size=1, unique=True))
    deltas = {c: draw(st.integers(-1000, 1000)) for c in columns}
    return ("add", key, deltas, draw(_flush))


@st.composite
def _delete(draw: st.DrawFn, shape: str) -> tuple[str, Any, dict[str, Any], bool]:
    key = draw(st.sampled_from(KEYS[shape]))
    return ("delete", key, {}, draw(_flush))


@st.composite
def scenarios(
    draw: st.DrawFn, shape: str, max_steps: int = 25
) -> tuple[list[dict[str, Any]], list[Step]]:
    """Initial rows of the table, then the changes to make to it."""
    present = draw(st.lists(st.sampled_from(KEYS[shape]), unique=True))
    initial = [draw(_full_row(shape, key)) for key in present]
    step = _upsert(shape) | _add(shape) | _delete(shape)
    # Hypothesis keeps lists short unless told: merges need several changes per key.
    size = draw(st.integers(0, max_steps))
    return initial, draw(st.lists(step, min_size=size, max_size=size))


# -- the naive reference ------------------------------------------------------------------


def _where(table: Table) -> str:
    return " AND ".join(f"{k} = ?" for k in table.key)


def _key_values(table: Table, key: Any) -> tuple[Any, ...]:
    return (key,) if len(table.key) == 1 else tuple(key)


def apply_one_by_one(table: Table, initial: list[dict[str, Any]], steps: list[Step]) -> set[Any]:
    """The table after each change is applied on its own, in order (plain SQL)."""
    conn = sqlite3.connect(":memory:")
    try:
        columns = ", ".join(table.columns)
        conn.execute(f"CREATE TABLE ref ({columns}, PRIMARY KEY ({', '.join(table.key)}))")
        for row in initial:
            marks = ", ".join("?" for _ in row)
            conn.execute(
                f"INSERT INTO ref ({', '.join(row)}) VALUES ({marks})", tuple(row.values())
            )
        for kind, key, values, _flush in steps:
            where = _where(table)
            params = _key_values(table, key)
            exists = conn.execute(f"SELECT 1 FROM ref WHERE {where}", params).fetchone()
            if kind == "delete":
                conn.execute(f"DELETE FROM ref WHERE {where}", params)
            elif kind == "upsert":
                others = [c for c in values if c not in table.key]
                if exists is None:
                    marks = ", ".join("?" for _ in values)
                    conn.execute(
                        f"INSERT INTO ref ({', '.join(values)}) VALUES ({marks})",
                        tuple(values.values()),
                    )
                elif others:
                    sets = ", ".join(f"{c} = ?" for c in others)
                    conn.execute(
                        f"UPDATE ref SET {sets} WHERE {where}",
                        (*(values[c] for c in others), *params),
                    )
            elif exists is None:  # add, creating the row with the key and the deltas
                row = {**_key_row(table, key), **values}
                marks = ", ".join("?" for _ in row)
                conn.execute(
                    f"INSERT INTO ref ({', '.join(row)}) VALUES ({marks})", tuple(row.values())
                )
            else:  # add to an existing row, NULL counting as 0
                for column, delta in values.items():
                    conn.execute(
                        f"UPDATE ref SET {column} = COALESCE({column}, 0) + ? WHERE {where}",
                        (delta, *params),
                    )
        return set(conn.execute(f"SELECT {columns} FROM ref").fetchall())
    finally:
        conn.close()


# -- the read store's way -----------------------------------------------------------------


async def apply_through_changesets(
    store: ReadStore, table: Table, initial: list[dict[str, Any]], steps: list[Step]
) -> set[Any]:
    """The table after the changes are staged in a ChangeSet and flushed by ``store``
    (flushed, and the ChangeSet reused, wherever a step says so, as a handler's SQL does)."""
    physical = store.physical(table, next(_generations))
    dialect = store.dialect
    async with store.transaction() as tx:
        await tx.execute(dialect.create_table(table, physical))
        for row in initial:
            marks = ", ".join("?" for _ in row)
            names = ", ".join(f'"{c}"' for c in row)
            await tx.execute(
                dialect.sql(f"INSERT INTO {physical} ({names}) VALUES ({marks})"), *row.values()
            )
    try:
        changes = ChangeSet(table)
        async with store.transaction() as tx:
            for kind, key, values, flush in steps:
                # Copies: what the ChangeSet does to the caller's dicts is tested on its own.
                if kind == "upsert":
                    changes.upsert(dict(values))
                elif kind == "add":
                    changes.add(key, dict(values))
                else:
                    changes.delete(key)
                if flush:
                    await tx.flush([(changes, physical)])
                    assert len(changes) == 0, "a flush clears what it wrote"
            await tx.flush([(changes, physical)])
        columns = ", ".join(f'"{c}"' for c in table.columns)
        return set(await store.query(f"SELECT {columns} FROM {physical}"))
    finally:
        async with store.transaction() as tx:
            await tx.execute(f"DROP TABLE {physical}")


async def check_against_reference(
    store: ReadStore, shape: str, initial: list[dict[str, Any]], steps: list[Step]
) -> None:
    table = TABLES[shape]
    expected = apply_one_by_one(table, initial, steps)
    assert await apply_through_changesets(store, table, initial, steps) == expected


@pytest.fixture
async def read_store(tmp_path: Path) -> AsyncIterator[SQLiteReadStore]:
    async with SQLiteReadStore(tmp_path / "read.db") as store:
        yield store


# One store for all of a test's examples: each example writes its own fresh table.
PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(scenario=scenarios("single"))
async def test_flushing_merged_changes_equals_applying_each_change_in_order(
    read_store: SQLiteReadStore, scenario: tuple[list[dict[str, Any]], list[Step]]
) -> None:
    await check_against_reference(read_store, "single", *scenario)


@PROPERTY_SETTINGS
@given(scenario=scenarios("composite"))
async def test_merged_changes_equal_changes_in_order_with_a_composite_key(
    read_store: SQLiteReadStore, scenario: tuple[list[dict[str, Any]], list[Step]]
) -> None:
    await check_against_reference(read_store, "composite", *scenario)


async def test_the_reference_itself_tells_merge_orders_apart(read_store: SQLiteReadStore) -> None:
    # A guard on the harness: a wrong merge (the increment applied before the upsert that
    # came first) must produce a different table, or the property above proves nothing.
    steps: list[Step] = [
        ("upsert", "x", {"k": "x", "a": 5}, False),
        ("add", "x", {"a": 1}, False),
    ]
    assert apply_one_by_one(SINGLE, [], steps) == {("x", 6, None, None)}
    assert apply_one_by_one(SINGLE, [], steps[::-1]) == {("x", 5, None, None)}
    await check_against_reference(read_store, "single", [], steps)


# -- the plan: each key written once ------------------------------------------------------


def _stage(table: Table, steps: list[Step]) -> ChangeSet:
    changes = ChangeSet(table)
    for kind, key, values, _flush in steps:
        if kind == "upsert":
            changes.upsert(dict(values))
        elif kind == "add":
            changes.add(key, dict(values))
        else:
            changes.delete(key)
    return changes


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios("composite", max_steps=30))
def test_a_plan_writes_each_key_at_most_once_per_kind_of_statement(
    scenario: tuple[list[dict[str, Any]], list[Step]],
) -> None:
    _initial, steps = scenario
    changes = _stage(COMPOSITE, steps)
    deletes, upserts, adds = changes.plan()
    touched = {key for _kind, key, _values, _flush in steps}
    assert len(changes) == len(touched)
    assert len(deletes) == len(set(deletes))
    upserted = [
        tuple(row[columns.index(k)] for k in COMPOSITE.key)
        for columns, rows in upserts
        for row in rows
    ]
    assert len(upserted) == len(set(upserted))
    added = [row[:2] for _columns, rows in adds for row in rows]
    assert len(added) == len(set(added))
    assert set(deletes) | set(upserted) | set(added) <= touched
    # One statement per set of columns.
    assert len({columns for columns, _rows in upserts}) == len(upserts)
    assert len({columns for columns, _rows in adds}) == len(adds)
    for columns, _rows in adds:
        assert columns[:2] == COMPOSITE.key


def test_an_upsert_then_increments_is_one_upsert_with_the_sums() -> None:
    changes = ChangeSet(SINGLE)
    changes.upsert({"k": "x", "a": 1})
    changes.add("x", {"a": 2})
    changes.add("x", {"a": 3, "b": 4})
    changes.add("x", {"b": 5})
    assert changes.plan() == ([], [(("k", "a"), [("x", 6)])], [(("k", "b"), [("x", 9)])])


def test_a_delete_then_an_upsert_replaces_the_row() -> None:
    changes = ChangeSet(SINGLE)
    changes.delete("x")
    changes.upsert({"k": "x", "c": "p"})
    assert changes.plan() == (["x"], [(("k", "c"), [("x", "p")])], [])


def test_anything_followed_by_a_delete_is_a_delete() -> None:
    changes = ChangeSet(SINGLE)
    changes.upsert({"k": "x", "a": 1})
    changes.add("x", {"b": 1})
    changes.delete("x")
    changes.add("y", {"a": 1})
    changes.delete("y")
    assert changes.plan() == (["x", "y"], [], [])


def test_clear_forgets_every_staged_change() -> None:
    changes = ChangeSet(SINGLE)
    changes.upsert({"k": "x", "a": 1})
    changes.delete("y")
    assert len(changes) == 2
    changes.clear()
    assert len(changes) == 0
    assert changes.plan() == ([], [], [])


# -- the ChangeSet keeps its own copies ---------------------------------------------------


def test_a_row_dict_reused_for_the_next_key_does_not_change_the_staged_row() -> None:
    # A handler filling one dict in a loop: each upsert must stage the row as it was then.
    changes = ChangeSet(SINGLE)
    row = {"k": "x", "a": 1}
    changes.upsert(row)
    row["k"] = "y"
    row["a"] = 2
    changes.upsert(row)
    assert changes.plan()[1] == [(("k", "a"), [("x", 1), ("y", 2)])]


def test_staging_never_modifies_the_callers_dicts() -> None:
    changes = ChangeSet(SINGLE)
    first = {"k": "x", "a": 1}
    second = {"k": "x", "b": 2}
    deltas = {"a": 5}
    changes.upsert(first)
    changes.upsert(second)
    changes.add("x", deltas)
    assert first == {"k": "x", "a": 1}
    assert second == {"k": "x", "b": 2}
    assert deltas == {"a": 5}
    assert changes.plan()[1] == [(("k", "a", "b"), [("x", 6, 2)])]


# -- increments ---------------------------------------------------------------------------


async def test_an_add_without_deltas_does_the_same_whether_or_not_a_delete_came_first_in_the_batch(
    read_store: SQLiteReadStore,
) -> None:
    # The same two changes, flushed together or one flush each, must leave the same table.
    steps: list[Step] = [("delete", "x", {}, False), ("add", "x", {}, False)]
    one_batch = await apply_through_changesets(read_store, SINGLE, [], steps)
    two_batches = await apply_through_changesets(
        read_store, SINGLE, [], [("delete", "x", {}, True), ("add", "x", {}, False)]
    )
    assert one_batch == two_batches


@pytest.mark.parametrize("staged_first", [None, "upsert", "add", "delete"])
def test_an_increment_of_a_key_column_is_refused(staged_first: str | None) -> None:
    # Adding to the key would move the row to another key behind the ChangeSet's back.
    changes = ChangeSet(SINGLE)
    if staged_first == "upsert":
        changes.upsert({"k": "x", "a": 1})
    elif staged_first == "add":
        changes.add("x", {"a": 1})
    elif staged_first == "delete":
        changes.delete("x")
    with pytest.raises(ValidationError, match="'k'"):
        changes.add("x", {"k": "z"})


# -- declaration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Accounts", "1accounts", "acc-ounts", "acc ounts", "", "a" * 49, 'a"b', 7]
)
def test_a_table_name_outside_the_vocabulary_is_refused(name: Any) -> None:
    with pytest.raises(ValidationError, match="table name"):
        Table(name, {"id": "text"}, key="id")


def test_a_table_name_of_48_characters_is_accepted() -> None:
    assert Table("a" * 48, {"id": "text"}, key="id").physical(3) == "a" * 48 + "__3"


def test_a_table_name_with_a_double_underscore_is_refused() -> None:
    with pytest.raises(ValidationError, match="'__'"):
        Table("orders__old", {"id": "text"}, key="id")


@pytest.mark.parametrize("column", ["Id", "9id", "i-d", "", "x" * 49])
def test_a_column_name_outside_the_vocabulary_is_refused(column: str) -> None:
    with pytest.raises(ValidationError, match="column name"):
        Table("orders", {"id": "text", column: "text"}, key="id")


@pytest.mark.parametrize("kind", ["varchar", "int", "TEXT", "", None])
def test_an_unknown_column_type_is_refused_with_the_known_ones_listed(kind: Any) -> None:
    with pytest.raises(ValidationError, match="boolean, bytes, float, integer, json, text"):
        Table("orders", {"id": "text", "total": kind}, key="id")


def test_every_declared_type_is_accepted() -> None:
    kinds = ["text", "integer", "float", "boolean", "bytes", "json"]
    columns: dict[str, Any] = {f"c_{kind}": kind for kind in kinds}
    table = Table("everything", columns, key="c_text")
    assert list(table.columns.values()) == kinds


def test_a_table_without_columns_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs columns"):
        Table("orders", {}, key="id")


@pytest.mark.parametrize("key", ["order_id", ("id", "line"), ["line", "id"]])
def test_a_key_column_that_is_not_declared_is_refused(key: Any) -> None:
    with pytest.raises(ValidationError, match=r"no column '(order_id|line)'"):
        Table("orders", {"id": "text"}, key=key)


def test_an_index_on_an_undeclared_column_is_refused() -> None:
    with pytest.raises(ValidationError, match="no column 'owner'"):
        Table("orders", {"id": "text", "total": "integer"}, key="id", indexes=[Index("owner")])


def test_an_index_needs_a_column() -> None:
    with pytest.raises(ValidationError, match="at least one column"):
        Index()


def test_a_declared_table_keeps_its_key_as_a_tuple_and_its_indexes() -> None:
    table = Table(
        "orders",
        {"owner": "text", "id": "text", "total": "integer"},
        key=["owner", "id"],
        indexes=[Index("total", unique=True)],
    )
    assert table.key == ("owner", "id")
    assert table.indexes == (Index("total", unique=True),)
    assert table.physical(2) == "orders__2"


# -- staging errors -----------------------------------------------------------------------


def test_a_row_missing_its_key_column_is_refused() -> None:
    with pytest.raises(ValidationError, match="key column 'k'"):
        ChangeSet(SINGLE).upsert({"a": 1})


def test_a_row_missing_part_of_a_composite_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="key column 'k2'"):
        ChangeSet(COMPOSITE).upsert({"k1": "x", "a": 1})


@pytest.mark.parametrize("staged_first", [None, "upsert", "add", "delete"])
def test_an_upsert_of_an_unknown_column_is_refused(staged_first: str | None) -> None:
    changes = ChangeSet(SINGLE)
    if staged_first == "upsert":
        changes.upsert({"k": "x", "a": 1})
    elif staged_first == "add":
        changes.add("x", {"a": 1})
    elif staged_first == "delete":
        changes.delete("x")
    with pytest.raises(ValidationError, match="no column 'nope'"):
        changes.upsert({"k": "x", "nope": 1})


@pytest.mark.parametrize("staged_first", [None, "upsert", "add", "delete"])
def test_an_add_to_an_unknown_column_is_refused(staged_first: str | None) -> None:
    changes = ChangeSet(SINGLE)
    if staged_first == "upsert":
        changes.upsert({"k": "x", "a": 1})
    elif staged_first == "add":
        changes.add("x", {"a": 1})
    elif staged_first == "delete":
        changes.delete("x")
    with pytest.raises(ValidationError, match="no column 'nope'"):
        changes.add("x", {"nope": 1})


@pytest.mark.parametrize("key", ["x", 1, ["x", 1], ("x",), ("x", 1, 2)])
@pytest.mark.parametrize("operation", ["add", "delete"])
def test_a_composite_key_must_be_a_tuple_of_its_width(key: Any, operation: str) -> None:
    changes = ChangeSet(COMPOSITE)
    with pytest.raises(ValidationError, match="is a tuple"):
        if operation == "add":
            changes.add(key, {"a": 1})
        else:
            changes.delete(key)
    assert len(changes) == 0


def test_a_composite_key_as_a_tuple_is_accepted() -> None:
    changes = ChangeSet(COMPOSITE)
    changes.add(("x", 1), {"a": 1})
    changes.delete(("y", 2))
    assert changes.plan() == ([("y", 2)], [], [(("k1", "k2", "a"), [("x", 1, 1)])])
