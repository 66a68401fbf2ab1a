"""Watch the SQLite store's write connection from a test."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from obelisk.store import SQLiteEventStore


def spy_on_writer_connection(store: SQLiteEventStore) -> list[sqlite3.Connection]:
    """Record every connection the store's writer opens (to watch it work)."""
    opened: list[sqlite3.Connection] = []
    factory: Callable[[], sqlite3.Connection] = store._connect_writer

    def connect() -> sqlite3.Connection:
        conn = factory()
        opened.append(conn)
        return conn

    store._connect_writer = connect  # type: ignore[method-assign]
    return opened
