"""Helpers shared by the SQLite integration tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from obelisk.store import SQLiteEventStore, StoredEvent


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


def assert_gap_free(events: Sequence[StoredEvent]) -> None:
    """Positions are 1..N and every stream's versions run 1, 2, ... in position order."""
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, int] = {}
    for e in events:
        versions[e.stream_id] = versions.get(e.stream_id, 0) + 1
        assert e.version == versions[e.stream_id], e
