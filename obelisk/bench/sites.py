"""Where a run's databases live, and the ones projection workloads add beside them.

The backend gives each run one fresh database: a SQLite file or a PostgreSQL schema.
Projection workloads need more — a read store, a second event log — and put it where a
user would: read models in **their own SQLite file next to the event file** (their batches
then never wait for the event writer's lock, and a rebuild never bloats the event file),
or in **their own schema of the same PostgreSQL database** (dropped and rebuilt without
touching the events). Both sides of a workload use the same places, and each run removes
what it added, whether it passed or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from obelisk.bench.measure import BenchError
from obelisk.projections import ReadStore, read_store_from_url
from obelisk.store.base import EventStore
from obelisk.store.sqlite import SQLiteEventStore
from obelisk.store.url import store_from_url

if TYPE_CHECKING:
    from obelisk.bench.baseline import RawBaseline

__all__ = ["Site"]

# PostgresEventStore takes schema names of at most 40 characters: siblings keep to that.
_SCHEMA_MAX: Final = 40
_SQLITE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")

Kind = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class Site:
    """One database of a run: a SQLite file (``location`` is its path) or a PostgreSQL
    schema (``location`` is its name, in the database ``dsn`` names)."""

    kind: Kind
    location: str
    dsn: str | None = None

    @classmethod
    def of_store(cls, store: EventStore) -> Site:
        """The database an open bench event store writes to."""
        if isinstance(store, SQLiteEventStore):
            return cls("sqlite", str(store.path))
        names = getattr(store, "names", None)
        dsn = getattr(store, "dsn", None)
        if names is None or not isinstance(dsn, str):
            raise BenchError(f"projection workloads do not know where {store!r} lives")
        return cls("postgresql", str(names.schema_name), dsn)

    @classmethod
    def of_raw(cls, raw: RawBaseline, location: str) -> Site:
        """The database at ``location`` as the raw baseline ``raw`` reaches it."""
        dsn = getattr(raw, "dsn", None)
        if isinstance(dsn, str):
            return cls("postgresql", location, dsn)
        return cls("sqlite", location)

    def beside(self, label: str) -> Site:
        """A sibling database: ``<stem>.<label>.db`` next to the file, or the schema
        ``<schema>_<label>`` (the schema's name cut short to stay a valid store schema)."""
        if self.kind == "sqlite":
            path = Path(self.location)
            return Site("sqlite", str(path.with_name(f"{path.stem}.{label}{path.suffix}")))
        suffix = f"_{label}"
        if len(suffix) > _SCHEMA_MAX // 2:
            raise BenchError(f"sibling label {label!r} is too long")
        return Site("postgresql", self.location[: _SCHEMA_MAX - len(suffix)] + suffix, self.dsn)

    def _pg_url(self) -> str:
        assert self.dsn is not None
        parts = urlsplit(self.dsn)
        query = [*parse_qsl(parts.query), ("schema", self.location)]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def event_store_url(self) -> str:
        """A URL for ``store_from_url`` (and for helper processes)."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.location}"
        return self._pg_url()

    def read_store_url(self) -> str:
        """A URL for ``read_store_from_url`` naming this database as a read store."""
        # The same shapes as event store URLs: a file path, or the schema option.
        return self.event_store_url()

    def event_store(self) -> EventStore:
        """An unopened event store on this database."""
        return store_from_url(self.event_store_url())

    def read_store(self) -> ReadStore:
        """An unopened read store on this database."""
        return read_store_from_url(self.read_store_url())

    async def discard(self) -> None:
        """Delete the database (its file and journals, or its schema), if it exists."""
        if self.kind == "sqlite":
            _remove(self.location)
            return
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=30)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.location}" CASCADE')
        finally:
            await conn.close()


def _remove(path: str) -> None:
    for suffix in _SQLITE_SUFFIXES:
        Path(path + suffix).unlink(missing_ok=True)
