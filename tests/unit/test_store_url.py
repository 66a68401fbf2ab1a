"""store_from_url: the schemes, paths and options it accepts, and what it refuses."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from obelisk.store import (
    JsonCodec,
    MemoryEventStore,
    MsgPackCodec,
    SQLiteEventStore,
    store_from_url,
)


def _sqlite(url: str) -> SQLiteEventStore:
    store = store_from_url(url)
    assert isinstance(store, SQLiteEventStore)
    return store


def test_memory_url_builds_a_memory_store_with_the_json_codec() -> None:
    store = store_from_url("memory://")
    assert isinstance(store, MemoryEventStore)
    assert isinstance(store.codec, JsonCodec)


def test_memory_url_accepts_the_codec_option() -> None:
    store = store_from_url("memory://?codec=msgpack")
    assert isinstance(store, MemoryEventStore)
    assert isinstance(store.codec, MsgPackCodec)


def test_three_slashes_name_a_path_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = _sqlite("sqlite:///data/relative.db")
    assert store.path == Path("data/relative.db")
    assert not store.path.is_absolute()


def test_four_slashes_name_an_absolute_path(tmp_path: Path) -> None:
    store = _sqlite(f"sqlite:///{tmp_path}/absolute.db")
    assert str(tmp_path).startswith("/")  # so the URL above has four slashes
    assert store.path == tmp_path / "absolute.db"
    assert store.path.is_absolute()


def test_percent_escapes_in_the_path_are_decoded(tmp_path: Path) -> None:
    store = _sqlite(f"sqlite:///{tmp_path}/with%20space.db")
    assert store.path == tmp_path / "with space.db"


def test_the_sqlite_defaults_are_full_sync_json_and_five_seconds() -> None:
    store = _sqlite("sqlite:///defaults.db")
    assert store.synchronous == "FULL"
    assert isinstance(store.codec, JsonCodec)
    assert store.busy_timeout == 5.0


@pytest.mark.parametrize("value", ["NORMAL", "normal", "Normal"])
def test_the_synchronous_option_is_case_insensitive(value: str) -> None:
    assert _sqlite(f"sqlite:///x.db?synchronous={value}").synchronous == "NORMAL"


def test_the_codec_and_busy_timeout_options_are_applied() -> None:
    store = _sqlite("sqlite:///x.db?codec=msgpack&busy_timeout=2.5&synchronous=FULL")
    assert isinstance(store.codec, MsgPackCodec)
    assert store.busy_timeout == 2.5
    assert store.synchronous == "FULL"


async def test_a_relative_url_opens_a_database_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_errors: list[object]
) -> None:
    monkeypatch.chdir(tmp_path)
    async with _sqlite("sqlite:///relative.db?codec=msgpack&synchronous=NORMAL") as store:
        assert await store.last_position() == 0
    database = tmp_path / "relative.db"
    assert database.is_file()
    with closing(sqlite3.connect(database)) as conn:
        (codec,) = conn.execute("SELECT value FROM obelisk_meta WHERE key = 'codec'").fetchone()
    assert codec == "msgpack"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "unsupported store URL"),
        ("postgresql://localhost/db?pool_max_size=many", "many"),
        ("postgresql://localhost/db?schema=Bad-Name", "schema must be"),
        ("file:///tmp/x.db", "unsupported store URL"),
        ("x.db", "unsupported store URL"),
        ("", "unsupported store URL"),
        ("sqlite://host/x.db", "sqlite:///relative.db"),
        ("sqlite:///", "names no database file"),
        ("sqlite://", "names no database file"),
        ("sqlite:///x.db?synchronous=OFF", "synchronous must be FULL or NORMAL"),
        ("sqlite:///x.db?codec=xml", "unknown codec"),
        ("sqlite:///x.db?journal=wal", "unknown option"),
        ("sqlite:///x.db?busy_timeout=soon", "soon"),
        ("memory://?synchronous=FULL", "unknown option"),
        ("memory://?codec=yaml", "unknown codec"),
    ],
)
def test_a_bad_url_raises_value_error_saying_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_from_url(url)


def test_a_postgresql_url_keeps_obelisk_options_and_passes_the_rest_to_the_driver() -> None:
    from obelisk.store.postgres import PostgresEventStore

    store = store_from_url(
        "postgresql://u:p@db.example:6543/app?schema=sales&prefix=es_&pool_max_size=4"
        "&max_in_flight=3&lock_timeout=2.5&codec=msgpack&sslmode=disable"
    )
    assert isinstance(store, PostgresEventStore)
    assert (store.names.schema_name, store.names.prefix) == ("sales", "es_")
    assert (store.pool_max_size, store.max_in_flight, store.lock_timeout) == (4, 3, 2.5)
    assert store.codec.name == "msgpack"
    assert store.dsn == "postgresql://u:p@db.example:6543/app?sslmode=disable"


def test_the_error_for_an_unknown_option_names_every_unknown_option() -> None:
    with pytest.raises(ValueError) as info:
        store_from_url("sqlite:///x.db?zeta=1&alpha=2&synchronous=FULL")
    assert "alpha, zeta" in str(info.value)
