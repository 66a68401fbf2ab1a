"""The raw asyncpg baseline: obelisk's event table driven by hand, one connection.

The runner has obelisk's store create the schema (and the seed rows) in a fresh PostgreSQL
schema per run; this side then writes and reads that schema's ``obelisk_events`` table,
which has obelisk's primary key (position) and unique indexes ((stream_id, version) and
event_id), so both sides pay for the same indexes. Event ids travel as their 16 raw bytes,
as obelisk's connections send them: a ratio measures what obelisk adds on top of the
driver, not a difference in codec set-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import Sample, stopwatch
from obelisk.bench.raw_postgres_projection import project_balances
from obelisk.bench.workload import AccountState
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.domain.events import Event
from obelisk.store.records import new_event_id

__all__ = ["RawPostgresBaseline"]

_TABLE = "obelisk_events"
_COLUMNS = (
    "position", "stream_id", "version", "event_id", "event_type", "schema_version", "data",
    "recorded_at", "correlation_id", "causation_id",
)  # fmt: skip
_OPENED = AccountOpened.event_type
_DEPOSITED = MoneyDeposited.event_type


def _insert(table: str) -> str:
    # The position column has no default (obelisk computes it); a hand-written insert
    # derives a unique, increasing one from its own transaction id, as obelisk does.
    return (
        f"INSERT INTO {table} (position, stream_id, version, event_id, event_type, "
        "schema_version, data, recorded_at, correlation_id, causation_id) VALUES "
        "(pg_current_xact_id()::text::bigint << 16, $1, $2, $3, $4, 1, $5, $6, NULL, NULL)"
    )


class RawPostgresBaseline(RawBaseline):
    """Plain asyncpg on the event table: autocommit statements, prepared and cached.

    Args:
        dsn: the server's connection URI; ``location`` arguments name a schema in it.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._encode = msgspec.json.Encoder().encode
        self._decoders: dict[str, Any] = {
            _OPENED: msgspec.json.Decoder(AccountOpened),
            _DEPOSITED: msgspec.json.Decoder(MoneyDeposited),
        }

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, timeout=30)
        await conn.set_type_codec(
            "uuid",
            schema="pg_catalog",
            encoder=lambda value: value,
            decoder=lambda value: value,
            format="binary",
        )
        return conn

    @staticmethod
    def _table(schema: str) -> str:
        return f'"{schema}"."{_TABLE}"'

    async def insert_rows(self, location: str, opens: Sequence[tuple[str, str]]) -> Sample:
        conn = await self._connect()
        table = self._table(location)
        try:
            execute, encode, insert = conn.execute, self._encode, _insert(table)
            with stopwatch() as watch:
                for stream_id, owner in opens:
                    # Autocommit: one statement is one transaction, one commit.
                    await execute(
                        insert, stream_id, 1, new_event_id(), _OPENED,
                        encode(AccountOpened(owner=owner)), time.time(),
                    )  # fmt: skip
            count = await conn.fetchval(f"SELECT count(*) FROM {table}")
        finally:
            await conn.close()
        return Sample(watch.seconds, len(opens), count)

    async def read_then_append(self, location: str, deposits: Sequence[tuple[str, int]]) -> Sample:
        conn = await self._connect()
        table = self._table(location)
        select = f"SELECT event_type, data FROM {table} WHERE stream_id = $1 ORDER BY version"
        try:
            fetch, execute, encode, insert = conn.fetch, conn.execute, self._encode, _insert(table)
            with stopwatch() as watch:
                for stream_id, amount in deposits:
                    # What a hand-written command does: in one transaction, read the stream
                    # (no decoding), then append at the next version; the unique (stream,
                    # version) index is the concurrency check.
                    async with conn.transaction():
                        rows = await fetch(select, stream_id)
                        await execute(
                            insert, stream_id, len(rows) + 1, new_event_id(), _DEPOSITED,
                            encode(MoneyDeposited(amount=amount)), time.time(),
                        )  # fmt: skip
            counts = {
                row[0]: row[1]
                for row in await conn.fetch(
                    f"SELECT stream_id, count(*) FROM {table} GROUP BY stream_id"
                )
            }
        finally:
            await conn.close()
        return Sample(watch.seconds, len(deposits), counts)

    async def load_stream(self, location: str, stream_id: str, loads: int) -> Sample:
        conn = await self._connect()
        select = (
            f"SELECT event_type, data FROM {self._table(location)} "
            "WHERE stream_id = $1 ORDER BY version"
        )
        decoders = self._decoders
        events: list[Any] = []
        try:
            with stopwatch() as watch:
                for _ in range(loads):
                    rows = await conn.fetch(select, stream_id)
                    events = [decoders[type_name].decode(data) for type_name, data in rows]
        finally:
            await conn.close()
        return Sample(watch.seconds, loads, events)

    async def load_from_snapshot(self, location: str, stream_id: str, loads: int) -> Sample:
        conn = await self._connect()
        snapshot = (
            f'SELECT version, state FROM "{location}"."obelisk_snapshots" WHERE stream_id = $1'
        )
        after = (
            f"SELECT event_type, data FROM {self._table(location)} "
            "WHERE stream_id = $1 AND version > $2 ORDER BY version"
        )
        decoders = self._decoders
        state_decoder = msgspec.msgpack.Decoder(AccountState)
        result = (0, 0)
        try:
            with stopwatch() as watch:
                for _ in range(loads):
                    row = await conn.fetchrow(snapshot, stream_id)
                    assert row is not None, "the runner seeded a snapshot"
                    version, state = row
                    balance = state_decoder.decode(state).balance
                    rows = await conn.fetch(after, stream_id, version)
                    for type_name, data in rows:
                        balance += decoders[type_name].decode(data).amount
                    result = (balance, version + len(rows))
        finally:
            await conn.close()
        return Sample(watch.seconds, loads, result)

    async def catch_up(self, location: str, page: int, passes: int) -> Sample:
        conn = await self._connect()
        # The same columns obelisk's read_all returns (the envelope): the same database
        # work, decoded and folded by hand.
        select = (
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table(location)} "
            "WHERE position > $1 ORDER BY position LIMIT $2"
        )
        decoders = self._decoders
        balances: dict[str, int] = {}
        read = 0
        try:
            with stopwatch() as watch:
                for _ in range(passes):
                    balances = {}
                    after = 0
                    while True:
                        rows = await conn.fetch(select, after, page)
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
            await conn.close()
        return Sample(watch.seconds, read, balances)

    async def project_balances(self, location: str, page: int, passes: int = 1) -> Sample:
        return await project_balances(
            self._connect, self.dsn, self._decoders, location, page, passes
        )

    async def copy_events(
        self, location: str, appends: Sequence[tuple[str, Sequence[Event]]]
    ) -> Sample:
        conn = await self._connect()
        table = self._table(location)
        encode = self._encode
        try:
            with stopwatch() as watch:
                # The rows a hand-written loader builds: positions counted from 1 (the
                # table is empty), versions from 1 per stream, a fresh id per event.
                now = time.time()
                records: list[tuple[Any, ...]] = []
                add = records.append
                for stream_id, events in appends:
                    for version, event in enumerate(events, 1):
                        add(
                            (len(records) + 1, stream_id, version, new_event_id(),
                             event.event_type, event.schema_version, encode(event), now,
                             None, None)
                        )  # fmt: skip
                await conn.copy_records_to_table(
                    _TABLE, schema_name=location, columns=_COLUMNS, records=records
                )
            row = await conn.fetchrow(f"SELECT count(*), count(DISTINCT stream_id) FROM {table}")
        finally:
            await conn.close()
        assert row is not None
        return Sample(watch.seconds, len(records), (row[0], row[1]))
