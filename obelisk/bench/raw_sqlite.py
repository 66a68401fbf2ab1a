"""The raw ``sqlite3`` baseline: the obelisk schema driven by hand.

The connection gets the settings obelisk's own connections use (WAL, the same
``synchronous``, a 64 MiB page cache, memory-mapped reads), so a ratio measures what
obelisk adds on top of the driver, not a difference in tuning.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.raw_sqlite_projection import project_balances
from obelisk.bench.workload import AccountState
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.store.records import new_event_id

__all__ = ["RawSQLiteBaseline"]

# The row obelisk writes for an event, column for column; position (the rowid) is left
# to SQLite, which assigns max + 1 just as obelisk's writer does.
_INSERT = (
    "INSERT INTO obelisk_events (stream_id, version, event_id, event_type, schema_version, "
    "data, recorded_at, correlation_id, causation_id) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
)
_OPENED = AccountOpened.event_type
_DEPOSITED = MoneyDeposited.event_type


class RawSQLiteBaseline(RawBaseline):
    """Plain ``sqlite3`` on the event table, one connection, autocommit off by hand.

    Args:
        synchronous: the ``PRAGMA synchronous`` level, the same as obelisk's store.
    """

    def __init__(self, synchronous: str = "FULL") -> None:
        self.synchronous = synchronous
        self._encode = msgspec.json.Encoder().encode
        self._decoders: dict[str, Any] = {
            _OPENED: msgspec.json.Decoder(AccountOpened),
            _DEPOSITED: msgspec.json.Decoder(MoneyDeposited),
        }

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA mmap_size = 268435456")
        return conn

    async def insert_rows(self, location: str, opens: Sequence[tuple[str, str]]) -> Sample:
        conn = self._connect(location)
        try:
            execute, encode = conn.execute, self._encode
            with stopwatch() as watch:
                for stream_id, owner in opens:
                    row = (
                        stream_id,
                        1,
                        new_event_id(),
                        _OPENED,
                        1,
                        encode(AccountOpened(owner=owner)),
                        time.time(),
                    )
                    execute("BEGIN")
                    execute(_INSERT, row)
                    execute("COMMIT")
            (count,) = conn.execute("SELECT COUNT(*) FROM obelisk_events").fetchone()
        finally:
            conn.close()
        return Sample(watch.seconds, len(opens), count)

    async def read_then_append(self, location: str, deposits: Sequence[tuple[str, int]]) -> Sample:
        conn = self._connect(location)
        try:
            execute, encode = conn.execute, self._encode
            with stopwatch() as watch:
                for stream_id, amount in deposits:
                    # What a hand-written command does: read the stream (no decoding), then
                    # append at the next version; the unique (stream, version) index is the
                    # concurrency check.
                    rows = execute(
                        "SELECT event_type, data FROM obelisk_events "
                        "WHERE stream_id = ? ORDER BY version",
                        (stream_id,),
                    ).fetchall()
                    row = (
                        stream_id,
                        len(rows) + 1,
                        new_event_id(),
                        _DEPOSITED,
                        1,
                        encode(MoneyDeposited(amount=amount)),
                        time.time(),
                    )
                    execute("BEGIN")
                    execute(_INSERT, row)
                    execute("COMMIT")
            counts = dict(
                conn.execute("SELECT stream_id, COUNT(*) FROM obelisk_events GROUP BY stream_id")
            )
        finally:
            conn.close()
        return Sample(watch.seconds, len(deposits), counts)

    async def load_stream(self, location: str, stream_id: str, loads: int) -> Sample:
        conn = self._connect(location)
        decoders = self._decoders
        events: list[Any] = []
        try:
            with stopwatch() as watch:
                for _ in range(loads):
                    rows = conn.execute(
                        "SELECT event_type, data FROM obelisk_events "
                        "WHERE stream_id = ? ORDER BY version",
                        (stream_id,),
                    ).fetchall()
                    events = [decoders[type_name].decode(data) for type_name, data in rows]
        finally:
            conn.close()
        return Sample(watch.seconds, loads, events)

    async def load_from_snapshot(self, location: str, stream_id: str, loads: int) -> Sample:
        conn = self._connect(location)
        decoders = self._decoders
        state_decoder = msgspec.msgpack.Decoder(AccountState)
        result = (0, 0)
        try:
            with stopwatch() as watch:
                for _ in range(loads):
                    version, state = conn.execute(
                        "SELECT version, state FROM obelisk_snapshots WHERE stream_id = ?",
                        (stream_id,),
                    ).fetchone()
                    balance = state_decoder.decode(state).balance
                    rows = conn.execute(
                        "SELECT event_type, data FROM obelisk_events "
                        "WHERE stream_id = ? AND version > ? ORDER BY version",
                        (stream_id, version),
                    ).fetchall()
                    for type_name, data in rows:
                        balance += decoders[type_name].decode(data).amount
                    result = (balance, version + len(rows))
        finally:
            conn.close()
        return Sample(watch.seconds, loads, result)

    async def catch_up(self, location: str, page: int, passes: int) -> Sample:
        conn = self._connect(location)
        decoders = self._decoders
        balances: dict[str, int] = {}
        read = 0
        try:
            with stopwatch() as watch:
                for _ in range(passes):
                    balances = {}
                    after = 0
                    while True:
                        # The same columns obelisk's read_all returns (the envelope):
                        # the same database work, decoded and folded by hand.
                        rows = conn.execute(
                            "SELECT position, stream_id, version, event_id, event_type, "
                            "schema_version, data, recorded_at, correlation_id, causation_id "
                            "FROM obelisk_events WHERE position > ? ORDER BY position LIMIT ?",
                            (after, page),
                        ).fetchall()
                        for position, stream_id, _, _, type_name, _, data, _, _, _ in rows:
                            event = decoders[type_name].decode(data)
                            if type(event) is MoneyDeposited:
                                balances[stream_id] += event.amount
                            else:
                                balances[stream_id] = 0
                            after = position
                        read += len(rows)
                        if len(rows) < page:
                            break
        finally:
            conn.close()
        return Sample(watch.seconds, read, balances)

    async def project_balances(self, location: str, page: int, passes: int = 1) -> Sample:
        return await project_balances(self._connect, self._decoders, location, page, passes)
