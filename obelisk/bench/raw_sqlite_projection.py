"""The raw ``sqlite3`` projection: balances kept by hand from the event file.

What a developer writes without a framework: read the log in pages (the same envelope
query as the raw catch-up, restricted to the two types the projection handles, as
obelisk's runner asks for), decode and fold each page into per-account changes, then in
one transaction write them with one ``executemany`` upsert and move a checkpoint row.

The read model lives in its own file next to the event file, with the settings obelisk's
SQLite read store uses (WAL, ``synchronous=NORMAL``, a 64 MiB cache), so both sides do the
same database work at the same durability.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.sites import Site
from obelisk.demo.bank import AccountOpened, MoneyDeposited

__all__ = ["fold_page", "project_balances"]

_TYPES = (AccountOpened.event_type, MoneyDeposited.event_type)
_SELECT = (
    "SELECT position, stream_id, version, event_id, event_type, schema_version, data, "
    "recorded_at, correlation_id, causation_id FROM obelisk_events "
    "WHERE position > ? AND event_type IN (?, ?) ORDER BY position LIMIT ?"
)


def _open_read(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -65536")
    return conn


async def project_balances(
    connect: Callable[[str], sqlite3.Connection],
    decoders: Mapping[str, Any],
    location: str,
    page: int,
    passes: int,
) -> Sample:
    """See :meth:`obelisk.bench.baseline.RawBaseline.project_balances`.

    ``connect`` opens the event file the way the raw baseline does (its settings).
    """
    site = Site("sqlite", location).beside("read")
    await site.discard()
    events = connect(location)
    read = _open_read(site.location)
    balances: dict[str, int] = {}
    applied = 0
    try:
        # Untimed, as obelisk's tables are registered before its clock: one fresh table
        # and one checkpoint row per pass.
        read.execute(
            "CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL) "
            "WITHOUT ROWID"
        )
        for number in range(passes):
            read.execute(
                f"CREATE TABLE balances_{number} (account_id TEXT NOT NULL PRIMARY KEY, "
                "balance INTEGER) WITHOUT ROWID"
            )
            read.execute("INSERT INTO checkpoints VALUES (?, 0)", (f"balances_{number}",))
        with stopwatch() as watch:
            for number in range(passes):
                applied += _one_pass(events, read, decoders, number, page)
        balances = dict(read.execute(f"SELECT account_id, balance FROM balances_{passes - 1}"))
    finally:
        events.close()
        read.close()
        await site.discard()
    return Sample(watch.seconds, applied, balances)


def _one_pass(
    events: sqlite3.Connection,
    read: sqlite3.Connection,
    decoders: Mapping[str, Any],
    number: int,
    page: int,
) -> int:
    upsert = (
        f"INSERT INTO balances_{number} (account_id, balance) VALUES (?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET balance = balance + excluded.balance"
    )
    name = f"balances_{number}"
    execute = read.execute
    after = 0
    applied = 0
    while True:
        rows = events.execute(_SELECT, (after, *_TYPES, page)).fetchall()
        if not rows:
            return applied
        changes, after = fold_page(rows, decoders)
        execute("BEGIN")
        read.executemany(upsert, changes.items())
        execute("UPDATE checkpoints SET position = ? WHERE name = ?", (after, name))
        execute("COMMIT")
        applied += len(rows)
        if len(rows) < page:
            return applied


def fold_page(
    rows: Sequence[Any], decoders: Mapping[str, Any]
) -> tuple[dict[str, int], int]:
    """One page of raw event rows folded by hand into balance changes per account, and the
    page's last position (what a user of the bare driver writes; both raw baselines use it)."""
    changes: dict[str, int] = {}
    after = 0
    for position, stream_id, _, _, type_name, _, data, _, _, _ in rows:
        event = decoders[type_name].decode(data)
        if type(event) is MoneyDeposited:
            changes[stream_id] = changes.get(stream_id, 0) + event.amount
        else:  # opened: the row exists from here on, at 0
            changes.setdefault(stream_id, 0)
        after = position
    return changes, after
