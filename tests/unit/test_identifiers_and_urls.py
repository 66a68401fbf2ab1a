"""One identifier rule for schemas, prefixes and table names on both stores, and URL
factories that raise only obelisk.ValidationError (a ValueError) for URLs they cannot use.

Nothing here connects: every refusal happens before a connection is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from obelisk.errors import ObeliskError, ProjectionNotFound, ValidationError
from obelisk.messaging import broker_from_url
from obelisk.messaging.inbox import Inbox
from obelisk.projections import Table, read_store_from_url
from obelisk.projections._pg_read import PostgresReadStore
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.store import store_from_url
from obelisk.store.identifiers import MAX_IDENTIFIER_BYTES, check_identifier
from obelisk.store.postgres import PostgresEventStore

DSN = "postgresql://nobody@127.0.0.1:1/none"  # never contacted


# -- the identifier rule -------------------------------------------------------------------


@pytest.mark.parametrize("option", ["schema", "prefix"])
def test_an_empty_schema_or_prefix_in_an_event_store_url_is_refused(option: str) -> None:
    with pytest.raises(ValidationError, match=f"option {option} is empty"):
        store_from_url(f"{DSN}?{option}=")


@pytest.mark.parametrize(
    ("url", "option"),
    [(f"{DSN}?schema=", "schema"), ("sqlite:///r.db?busy_timeout=", "busy_timeout")],
)
def test_an_empty_option_in_a_read_store_url_is_refused(url: str, option: str) -> None:
    with pytest.raises(ValidationError, match=f"option {option} is empty"):
        read_store_from_url(url)


@pytest.mark.parametrize(
    "schema", ["Bad-Name", "x" * 64, "y" * 41, "pg_reads", 'a"b', "1abc", "naïve", "%00"]
)
def test_the_event_store_and_the_read_store_refuse_a_bad_schema_in_the_same_words(
    schema: str,
) -> None:
    with pytest.raises(ValidationError) as event_side:
        store_from_url(f"{DSN}?schema={schema}")
    with pytest.raises(ValidationError) as read_side:
        read_store_from_url(f"{DSN}?schema={schema}")
    assert str(event_side.value) == str(read_side.value)
    assert "schema" in str(read_side.value)


def test_a_read_store_refuses_a_schema_postgresql_would_cut_at_63_bytes() -> None:
    with pytest.raises(ValidationError, match="schema 'sss"):
        PostgresReadStore(DSN, schema="s" * 70)


def test_a_schema_and_prefix_whose_notify_channel_passes_63_bytes_are_refused() -> None:
    # "<schema>.<prefix>events" is the channel: 40 + 1 + 20 + 6 = 67 bytes.
    with pytest.raises(ValidationError, match=f"PostgreSQL cuts names at {MAX_IDENTIFIER_BYTES}"):
        PostgresEventStore(DSN, schema="s" * 40, prefix="p" * 20)


def test_a_schema_and_prefix_whose_longest_name_is_63_bytes_are_accepted() -> None:
    store = PostgresEventStore(DSN, schema="s" * 40, prefix="p" * 16)
    assert len(store.channel.encode()) == MAX_IDENTIFIER_BYTES


def test_every_kind_of_name_is_refused_in_one_format_naming_kind_value_and_rule() -> None:
    for kind in ("schema", "table prefix", "table name", "column name"):
        with pytest.raises(ValidationError) as refused:
            check_identifier(kind, "Bad Name")
        assert str(refused.value).startswith(f"{kind} 'Bad Name' is refused: a {kind} must be")
    with pytest.raises(ValidationError, match=r"table name \(a list\) is refused"):
        check_identifier("table name", [])


def test_a_table_generation_whose_names_would_pass_63_bytes_is_refused() -> None:
    table = Table("t" * 48, {"id": "text"}, key="id")
    assert table.physical(1) == "t" * 48 + "__1"
    with pytest.raises(ValidationError, match="63 bytes"):
        table.physical(10**13)
    with pytest.raises(ValidationError, match="63 bytes"):
        table.index_name(10**8, 12)


def test_an_inbox_table_name_follows_the_identifier_rule(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="table name 'my inbox' is refused"):
        Inbox(SQLiteReadStore(tmp_path / "read.db"), table="my inbox")


# -- URL factories raise ValidationError -----------------------------------------------------


def test_a_memory_read_store_url_says_there_is_none_and_names_the_schemes() -> None:
    with pytest.raises(ValidationError, match="no in-memory read store") as refused:
        read_store_from_url("memory://")
    assert "sqlite:///" in str(refused.value) and "postgresql://" in str(refused.value)


@pytest.mark.parametrize(
    ("factory", "url", "message"),
    [
        (store_from_url, "mysql://localhost/db", "unsupported store URL"),
        (store_from_url, "sqlite://host/x.db", "sqlite:///relative.db"),
        (store_from_url, "sqlite:///x.db?codec=xml", "unknown codec"),
        (store_from_url, "sqlite:///x.db?journal=wal", "unknown option"),
        (store_from_url, f"{DSN}?pool_max_size=1&max_in_flight=2", "max_in_flight"),
        (read_store_from_url, "mysql://host/db", "unsupported read store URL"),
        (read_store_from_url, "sqlite://", "names no file"),
        (read_store_from_url, "sqlite:///r.db?bogus=1", "unknown option"),
        (read_store_from_url, f"{DSN}?synchronous_commit=maybe", "synchronous_commit"),
        (broker_from_url, "kafka://x", "unsupported broker URL"),
        (store_from_url, "http://[::1/x", "malformed store URL"),
        (read_store_from_url, "sqlite:///r\ud800.db", "not valid text"),
        (broker_from_url, "redis://h\x00/0", "NUL"),
    ],
)
def test_a_url_factory_refuses_a_bad_url_with_a_validation_error(
    factory: Any, url: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        factory(url)


@pytest.mark.parametrize("factory", [store_from_url, read_store_from_url, broker_from_url])
def test_a_url_that_is_not_a_str_is_a_validation_error(factory: Any) -> None:
    with pytest.raises(ValidationError, match="URL must be a str"):
        factory(None)


@pytest.mark.parametrize(
    ("factory", "url", "option"),
    [
        (store_from_url, "sqlite:///x.db?busy_timeout=abc", "busy_timeout"),
        (store_from_url, "sqlite:///x.db?busy_timeout=nan", "busy_timeout"),
        (store_from_url, f"{DSN}?pool_max_size=many", "pool_max_size"),
        (store_from_url, f"{DSN}?lock_timeout=inf", "lock_timeout"),
        (store_from_url, f"{DSN}?statement_timeout=-1", "statement_timeout"),
        (read_store_from_url, "sqlite:///r.db?busy_timeout=soon", "busy_timeout"),
    ],
)
def test_a_bad_numeric_option_is_a_validation_error_naming_the_option(
    factory: Any, url: str, option: str
) -> None:
    with pytest.raises(ValidationError, match=f"{option} must be"):
        factory(url)


async def test_pausing_a_projection_the_read_store_does_not_hold_raises_projection_not_found(
    tmp_path: Path,
) -> None:
    async with SQLiteReadStore(tmp_path / "read.db") as store:
        with pytest.raises(ProjectionNotFound, match="no projection 'ghost'") as missing:
            await store.set_paused("ghost", True)
    # Still a LookupError for callers that catch that, and one of obelisk's errors.
    assert isinstance(missing.value, LookupError) and isinstance(missing.value, ObeliskError)
