"""The raw-driver baseline port: the same database work as obelisk, with nothing on top.

Each backend implements it with its plain driver (``sqlite3`` for SQLite, asyncpg for
PostgreSQL). The runner
prepares every database with obelisk's own store first (schema and seed rows, untimed),
so both sides start from identical files and the baseline only does the timed work.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from obelisk.bench.measure import BenchError, Sample
from obelisk.domain.events import Event

__all__ = ["RawBaseline"]


class RawBaseline(abc.ABC):
    """Hand-written driver code for each workload, timed with the same stopwatch.

    ``location`` names a database the runner prepared (a file path for SQLite). Every
    method returns a :class:`Sample` whose ``result`` lets the workload check that the
    work was really done.
    """

    @abc.abstractmethod
    async def insert_rows(self, location: str, opens: Sequence[tuple[str, str]]) -> Sample:
        """Write one ``AccountOpened`` row per ``(stream_id, owner)``, one transaction each.

        ``result`` is the number of event rows in the database afterwards.
        """

    @abc.abstractmethod
    async def read_then_append(self, location: str, deposits: Sequence[tuple[str, int]]) -> Sample:
        """Per ``(stream_id, amount)``: read the stream's rows, then append one deposit row.

        ``result`` is ``{stream_id: number of rows}`` afterwards.
        """

    @abc.abstractmethod
    async def load_stream(self, location: str, stream_id: str, loads: int) -> Sample:
        """Read and decode every event of one stream, ``loads`` times.

        ``result`` is the list of events decoded by the last load.
        """

    @abc.abstractmethod
    async def catch_up(self, location: str, page: int, passes: int) -> Sample:
        """Read the whole log from the start in pages of ``page``, folding balances.

        Done ``passes`` times; ``result`` is ``{stream_id: balance}`` of the last pass.
        """

    @abc.abstractmethod
    async def load_from_snapshot(self, location: str, stream_id: str, loads: int) -> Sample:
        """Load one Account through its snapshot, ``loads`` times: read the snapshot row,
        decode its state, then read and fold the events after it.

        ``result`` is ``(balance, version)`` of the last load.
        """

    async def project_balances(self, location: str, page: int, passes: int = 1) -> Sample:
        """Keep a balances table by hand, ``passes`` times over, each time from position 0
        into a fresh table of a read database beside ``location`` (removed afterwards).

        Per page of ``page`` events of the two account types: decode, fold into one change
        per account, then in one transaction a batched upsert and a checkpoint update.
        ``work`` is the events applied; ``result`` the last pass's ``{stream_id: balance}``.
        """
        raise BenchError(f"{type(self).__name__} has no projection baseline")

    async def copy_events(
        self, location: str, appends: Sequence[tuple[str, Sequence[Event]]]
    ) -> Sample:
        """Bulk-load the events of ``(stream_id, events)`` pairs with the driver's fastest path.

        Versions count from 1 in each stream. ``result`` is ``(rows, streams)`` in the
        database afterwards. Only backends with a bulk path (PostgreSQL's COPY) have it.
        """
        raise BenchError(f"{type(self).__name__} has no bulk load")
