"""The projection API's small parts: declarations, handlers, partitions, page cursors,
the position header, the runner's arguments and read store URLs."""

from __future__ import annotations

import base64
import collections
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obelisk.domain import Event
from obelisk.errors import ValidationError
from obelisk.projections import (
    POSITION_HEADER,
    Context,
    Projection,
    ProjectionRunner,
    Table,
    handles,
    keyset_sql,
    partition_of,
    position_from_headers,
    position_header,
    read_store_from_url,
)
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.projections.pagination import decode_cursor, encode_cursor
from obelisk.projections.tables import ChangeSet


class ApiOpened(Event):
    event_type = "test_projection_api.Opened"
    owner: str


class ApiDeposited(Event):
    event_type = "test_projection_api.Deposited"
    amount: int


class ApiClosed(Event):
    event_type = "test_projection_api.Closed"


ACCOUNTS = Table(
    "api_accounts",
    {"owner": "text", "account_id": "text", "balance": "integer"},
    key="account_id",
)
LINES = Table(
    "api_lines",
    {"order_id": "text", "line": "integer", "sku": "text", "qty": "integer"},
    key=("order_id", "line"),
)


class Accounts(Projection):
    name = "api_accounts"
    accounts = ACCOUNTS

    @handles(ApiOpened)
    def opened(self, event: ApiOpened, ctx: Context) -> None:
        ctx.upsert(self.accounts, account_id=ctx.stream_id, owner=event.owner, balance=0)

    @handles(ApiDeposited)
    async def deposited(self, event: ApiDeposited, ctx: Context) -> None:
        ctx.add(self.accounts, ctx.stream_id, balance=event.amount)


# -- projection declarations --------------------------------------------------------------


@pytest.mark.parametrize("bad", [int, str, object(), "test_projection_api.Opened", None])
def test_handles_takes_only_event_classes(bad: Any) -> None:
    with pytest.raises(TypeError, match="Event classes"):
        handles(ApiOpened, bad)


def test_handles_refuses_an_event_instance() -> None:
    with pytest.raises(TypeError, match="Event classes"):
        handles(ApiOpened(owner="ann"))  # type: ignore[arg-type]


def test_handles_needs_an_event_class() -> None:
    with pytest.raises(TypeError, match="at least one"):
        handles()


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, None])
def test_a_projection_version_that_is_not_a_positive_int_is_refused(version: Any) -> None:
    with pytest.raises(TypeError, match="version must be an int >= 1"):
        type(Projection)("BadVersion", (Projection,), {"name": "bad", "version": version})


def test_a_projection_name_must_be_a_non_empty_str() -> None:
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        type(Projection)("NoName", (Projection,), {"name": ""})


def test_event_types_lists_the_stored_names_of_the_handled_types_sorted() -> None:
    class TwoTypes(Projection):
        name = "api_two_types"

        @handles(ApiDeposited, ApiOpened)
        def either(self, event: Event, ctx: Context) -> None: ...

        @handles(ApiDeposited)  # a type handled twice is listed once (the last one wins)
        def deposited(self, event: ApiDeposited, ctx: Context) -> None: ...

    assert TwoTypes.event_types() == [
        "test_projection_api.Deposited",
        "test_projection_api.Opened",
    ]
    assert Accounts.event_types() == [
        "test_projection_api.Deposited",
        "test_projection_api.Opened",
    ]


def test_a_projection_without_handlers_reads_no_types() -> None:
    class Nothing(Projection):
        name = "api_nothing"

    assert Nothing.event_types() == []
    assert Nothing().dispatch() == {}


def test_the_tables_of_a_projection_are_its_table_attributes_inherited_too() -> None:
    class WithLines(Accounts):
        name = "api_with_lines"
        lines = LINES

    assert Accounts.tables == (ACCOUNTS,)
    assert set(WithLines.tables) == {ACCOUNTS, LINES}


def test_dispatch_maps_each_type_to_its_bound_handler_and_whether_it_is_async() -> None:
    accounts = Accounts()
    dispatch = accounts.dispatch()
    assert set(dispatch) == {ApiOpened, ApiDeposited}
    assert dispatch[ApiOpened] == (accounts.opened, False)
    assert dispatch[ApiDeposited] == (accounts.deposited, True)


def test_a_subclass_inherits_its_bases_handlers_and_adds_its_own() -> None:
    class WithClosing(Accounts):
        name = "api_with_closing"

        @handles(ApiClosed)
        def closed(self, event: ApiClosed, ctx: Context) -> None: ...

    projection = WithClosing()
    dispatch = projection.dispatch()
    assert set(dispatch) == {ApiOpened, ApiDeposited, ApiClosed}
    assert dispatch[ApiOpened][0].__func__ is Accounts.opened  # type: ignore[attr-defined]
    assert dispatch[ApiOpened][0].__self__ is projection  # type: ignore[attr-defined]
    assert WithClosing.event_types() == sorted(
        [
            "test_projection_api.Deposited",
            "test_projection_api.Opened",
            "test_projection_api.Closed",
        ]
    )
    # The base class is unchanged by its subclass.
    assert ApiClosed not in Accounts().dispatch()


def test_an_overriding_method_is_the_one_dispatched_decorated_or_not() -> None:
    class Plain(Accounts):
        name = "api_plain_override"

        def opened(self, event: ApiOpened, ctx: Context) -> None: ...

    class Decorated(Accounts):
        name = "api_decorated_override"

        @handles(ApiOpened)
        def opened(self, event: ApiOpened, ctx: Context) -> None: ...

    for cls in (Plain, Decorated):
        handler, is_async = cls().dispatch()[ApiOpened]
        assert handler.__func__ is cls.opened  # type: ignore[attr-defined]
        assert is_async is False


def test_a_handler_moved_to_another_method_by_a_subclass_dispatches_there() -> None:
    class Moved(Accounts):
        name = "api_moved"

        @handles(ApiDeposited)
        def deposited_differently(self, event: ApiDeposited, ctx: Context) -> None: ...

    handler, is_async = Moved().dispatch()[ApiDeposited]
    assert handler.__func__ is Moved.deposited_differently  # type: ignore[attr-defined]
    assert is_async is False


def test_an_async_override_of_a_plain_handler_is_dispatched_as_async() -> None:
    # The runner awaits a handler only when dispatch says it is async: a wrong flag leaves
    # the override's coroutine un-awaited and its changes silently lost.
    class AsyncOverride(Accounts):
        name = "api_async_override"

        async def opened(self, event: ApiOpened, ctx: Context) -> None: ...  # type: ignore[override]

    handler, is_async = AsyncOverride().dispatch()[ApiOpened]
    assert handler.__func__ is AsyncOverride.opened  # type: ignore[attr-defined]
    assert is_async is True


def test_a_plain_override_of_an_async_handler_is_dispatched_as_plain() -> None:
    class PlainOverride(Accounts):
        name = "api_plain_override_of_async"

        def deposited(self, event: ApiDeposited, ctx: Context) -> None: ...  # type: ignore[override]

    handler, is_async = PlainOverride().dispatch()[ApiDeposited]
    assert handler.__func__ is PlainOverride.deposited  # type: ignore[attr-defined]
    assert is_async is False


# -- the context ---------------------------------------------------------------------------


def _context(*tables: Table) -> tuple[Context, dict[Table, ChangeSet]]:
    changes = {t: ChangeSet(t) for t in tables}
    names = {t: f'"{t.name}__1"' for t in tables}
    return Context(None, changes, names), changes  # type: ignore[arg-type]


def test_context_writes_to_a_table_not_of_the_projection_are_refused() -> None:
    ctx, changes = _context(*Accounts.tables)
    with pytest.raises(ValidationError, match="'api_lines' is not one of this projection's"):
        ctx.upsert(LINES, order_id="o-1", line=1, sku="s")
    with pytest.raises(ValidationError, match="'api_lines'"):
        ctx.add(LINES, ("o-1", 1), qty=1)
    with pytest.raises(ValidationError, match="'api_lines'"):
        ctx.delete(LINES, ("o-1", 1))
    with pytest.raises(ValidationError, match="'api_lines'"):
        ctx.table(LINES)
    assert len(changes[ACCOUNTS]) == 0


def test_context_writes_stage_changes_in_the_tables_changeset() -> None:
    ctx, changes = _context(ACCOUNTS, LINES)
    ctx.upsert(ACCOUNTS, account_id="a-1", owner="ann")
    ctx.add(ACCOUNTS, "a-1", balance=5)
    ctx.add(LINES, ("o-1", 2), qty=3)
    ctx.delete(LINES, ("o-1", 1))
    assert ctx.table(LINES) == '"api_lines__1"'
    # The increment is of a column the upsert did not set: it stays an increment.
    assert changes[ACCOUNTS].plan() == (
        [],
        [(("account_id", "owner"), [("a-1", "ann")])],
        [(("account_id", "balance"), [("a-1", 5)])],
    )
    assert changes[LINES].plan() == (
        [("o-1", 1)],
        [],
        [(("order_id", "line", "qty"), [("o-1", 2, 3)])],
    )


def test_context_refuses_a_composite_key_given_as_a_scalar() -> None:
    ctx, _changes = _context(LINES)
    with pytest.raises(ValidationError, match="is a tuple"):
        ctx.add(LINES, "o-1", qty=1)
    with pytest.raises(ValidationError, match="is a tuple"):
        ctx.delete(LINES, "o-1")


# -- partitions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_id", "of_4", "of_16", "of_7"),
    [
        # Computed once from crc32: a changed hash would move every stream's checkpoint.
        ("account-1", 0, 0, 3),
        ("account-2", 2, 10, 2),
        ("order-42", 2, 14, 1),
        ("c-0", 0, 8, 3),
        ("", 0, 0, 0),
        ("é-ünïcode", 2, 6, 1),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", 0, 0, 3),
    ],
)
def test_the_partition_of_a_stream_is_stable(
    stream_id: str, of_4: int, of_16: int, of_7: int
) -> None:
    assert partition_of(stream_id, 4) == of_4
    assert partition_of(stream_id, 16) == of_16
    assert partition_of(stream_id, 7) == of_7
    assert partition_of(stream_id, 1) == 0


def test_stream_ids_spread_roughly_evenly_over_four_partitions() -> None:
    counts = collections.Counter(partition_of(f"account-{n}", 4) for n in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 <= count <= 1200 for count in counts.values()), counts


# -- page cursors and keyset statements ----------------------------------------------------

_CURSOR_VALUES = st.lists(st.text() | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4)


@given(values=_CURSOR_VALUES)
def test_a_cursor_decodes_to_the_values_it_was_made_of(values: list[Any]) -> None:
    cursor = encode_cursor(values)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", cursor), "a cursor is safe in a URL as it is"
    assert decode_cursor(cursor, len(values)) == values


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "a",  # not base64 (a lone character is no byte)
        "",
        "é",
        _b64(b"not json"),
        _b64(b"[1, 2"),
    ],
)
def test_a_malformed_cursor_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ValidationError, match="malformed page cursor"):
        decode_cursor(cursor, 1)


@pytest.mark.parametrize(
    ("cursor", "width"),
    [
        (encode_cursor(["a", 1]), 3),
        (encode_cursor(["a", 1]), 1),
        (_b64(b'{"a": 1}'), 1),
        (_b64(b'"a"'), 1),
        (_b64(b"null"), 1),
    ],
)
def test_a_cursor_of_another_shape_does_not_fit_the_listing(cursor: str, width: int) -> None:
    with pytest.raises(ValidationError, match="does not fit this listing"):
        decode_cursor(cursor, width)


SQLITE_STORE = SQLiteReadStore("never-opened.db")
PG_STORE = PostgresReadStore("postgresql://nowhere/none", schema="reads")


def test_keyset_sql_always_ends_the_order_with_the_key_columns() -> None:
    sql, order = keyset_sql(SQLITE_STORE, ACCOUNTS, order_by=["owner"])
    assert order == ("owner", "account_id")
    assert sql.endswith('ORDER BY "owner" ASC, "account_id" ASC LIMIT ?')

    _sql, order = keyset_sql(SQLITE_STORE, ACCOUNTS, order_by=["account_id", "owner"])
    assert order == ("account_id", "owner"), "a key column already in the order stays put"

    _sql, order = keyset_sql(SQLITE_STORE, LINES, order_by=["line", "sku"])
    assert order == ("line", "sku", "order_id")

    _sql, order = keyset_sql(SQLITE_STORE, LINES, order_by=[])
    assert order == ("order_id", "line")


def test_keyset_sql_after_a_cursor_compares_the_whole_order_in_its_direction() -> None:
    sql, _order = keyset_sql(
        SQLITE_STORE, ACCOUNTS, order_by=["owner"], where={"balance": 0}, after=True
    )
    assert sql == (
        'SELECT "owner", "account_id", "balance" FROM "api_accounts" '
        'WHERE "balance" = ? AND ("owner", "account_id") > (?, ?) '
        'ORDER BY "owner" ASC, "account_id" ASC LIMIT ?'
    )
    sql, _order = keyset_sql(
        PG_STORE, ACCOUNTS, order_by=["owner"], where={"balance": 0}, after=True, direction="desc"
    )
    assert sql == (
        'SELECT "owner", "account_id", "balance" FROM "reads"."api_accounts" '
        'WHERE "balance" = $1 AND ("owner", "account_id") < ($2, $3) '
        'ORDER BY "owner" DESC, "account_id" DESC LIMIT $4'
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"order_by": ["nope"]},
        {"order_by": ["owner"], "where": {"nope": 1}},
        {"order_by": ["owner"], "columns": ["owner", "nope"]},
        {"order_by": ['owner" --']},
    ],
)
def test_keyset_sql_refuses_unknown_columns(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="no column"):
        keyset_sql(SQLITE_STORE, ACCOUNTS, **arguments)


@pytest.mark.parametrize("direction", ["up", "ASC", "", "asc; drop table x"])
def test_keyset_sql_refuses_a_direction_other_than_asc_or_desc(direction: Any) -> None:
    with pytest.raises(ValidationError, match="direction"):
        keyset_sql(SQLITE_STORE, ACCOUNTS, order_by=["owner"], direction=direction)


# -- the position header -------------------------------------------------------------------


@given(position=st.integers(0, 2**63 - 1))
def test_a_position_survives_the_round_trip_through_its_header(position: int) -> None:
    assert position_from_headers(position_header(position)) == position


def test_no_position_is_no_header() -> None:
    assert position_header(None) == {}
    assert position_from_headers({}) is None
    assert position_from_headers({"content-type": "text/plain", "position": "5"}) is None


@pytest.mark.parametrize("name", [POSITION_HEADER, "Obelisk-Position", "OBELISK-POSITION"])
def test_the_position_header_name_is_case_insensitive(name: str) -> None:
    assert position_from_headers({"accept": "*/*", name: " 42 "}) == 42


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "abc",
        "",
        "1.5",
        "1e3",
        "+7",
        "0x10",
        str(2**63),  # past the largest position
        "9" * 400,
        "²",  # a digit to str.isdigit, not to int()
        "١٢",  # Arabic-Indic digits: not what a client sends for 12
    ],
)
def test_a_position_header_that_is_not_a_position_is_a_validation_error(value: str) -> None:
    with pytest.raises(ValidationError, match=POSITION_HEADER):
        position_from_headers({POSITION_HEADER: value})


def test_the_largest_position_is_accepted() -> None:
    assert position_from_headers({POSITION_HEADER: str(2**63 - 1)}) == 2**63 - 1


# -- the runner's arguments ----------------------------------------------------------------


def _runner(projection: Any = None, **arguments: Any) -> ProjectionRunner:
    projection = Accounts() if projection is None else projection
    return ProjectionRunner(projection, object(), object(), **arguments)  # type: ignore[arg-type]


def test_a_runner_with_good_arguments_keeps_them() -> None:
    runner = _runner(partition=3, partitions=4, page_size=1, on_error="dead-letter")
    assert (runner.name, runner.partition, runner.partitions) == ("api_accounts", 3, 4)
    assert (runner.page_size, runner.on_error) == (1, "dead-letter")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"partition": 4, "partitions": 4}, "partition"),
        ({"partition": -1, "partitions": 4}, "partition"),
        ({"partition": 0, "partitions": 0}, "partition"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": -5}, "page_size"),
        ({"on_error": "ignore"}, "on_error"),
        ({"on_error": "STOP"}, "on_error"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"poll_interval": -1}, "poll_interval"),
    ],
)
def test_a_runner_refuses_arguments_out_of_range(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _runner(**arguments)


@pytest.mark.parametrize("projection", [Accounts, object(), "api_accounts"])
def test_a_runner_needs_a_projection_instance(projection: Any) -> None:
    with pytest.raises(ValidationError, match="Projection instance"):
        _runner(projection)


def test_a_runner_needs_a_named_projection() -> None:
    class Nameless(Projection):
        pass

    with pytest.raises(ValidationError, match="has no name"):
        _runner(Nameless())


# -- read store URLs -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:"])
def test_a_sqlite_url_without_a_path_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="names no file"):
        read_store_from_url(url)


@pytest.mark.parametrize("url", ["mysql://host/db", "read.db", "file:///tmp/read.db", ""])
def test_a_read_store_url_of_an_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported read store URL"):
        read_store_from_url(url)


@pytest.mark.parametrize("value", ["maybe", "true", "ON", "1"])
def test_a_postgresql_synchronous_commit_option_other_than_on_or_off_is_refused(
    value: str,
) -> None:
    with pytest.raises(ValueError, match="synchronous_commit must be on or off"):
        read_store_from_url(f"postgresql://u@host/db?synchronous_commit={value}&x=1")


def test_postgresql_options_of_the_read_store_are_taken_and_the_rest_go_to_the_driver() -> None:
    store = read_store_from_url(
        "postgresql://u@host/db?schema=reads&sslmode=require&synchronous_commit=on"
    )
    assert isinstance(store, PostgresReadStore)
    assert store.dsn == "postgresql://u@host/db?sslmode=require"
    assert store.schema == "reads"
    assert store.synchronous_commit is True


def test_read_store_urls_name_their_store() -> None:
    sqlite = read_store_from_url("sqlite:///var/read.db")
    assert isinstance(sqlite, SQLiteReadStore)
    assert sqlite.path == "var/read.db"
    assert read_store_from_url("sqlite:////abs/read.db").path == "/abs/read.db"  # type: ignore[attr-defined]

    pg = read_store_from_url("postgresql://u@host:5433/db?schema=reads")
    assert isinstance(pg, PostgresReadStore)
    assert (pg.dsn, pg.schema) == ("postgresql://u@host:5433/db", "reads")
    assert pg.synchronous_commit is False
    assert read_store_from_url("postgres://host/db").schema == "public"  # type: ignore[attr-defined]
