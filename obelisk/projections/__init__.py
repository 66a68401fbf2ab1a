"""CQRS read side: projections, their runner, read stores, rebuilds and workers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from obelisk.projections.consistency import (
    POSITION_HEADER,
    position_from_headers,
    position_header,
    wait_for_position,
)
from obelisk.projections.pagination import KeysetPage, fetch_page, keyset_sql
from obelisk.projections.projection import Context, Projection, handles
from obelisk.projections.readstore import (
    Claim,
    DeadLetter,
    ProjectionState,
    ReadStore,
    ReadTransaction,
)
from obelisk.projections.rebuild import RebuildProgress, rebuild
from obelisk.projections.runner import Lag, ProjectionError, ProjectionRunner, partition_of
from obelisk.projections.tables import Index, Table
from obelisk.projections.worker import ProjectionWorker

__all__ = [
    "POSITION_HEADER",
    "Claim",
    "Context",
    "DeadLetter",
    "Index",
    "KeysetPage",
    "Lag",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionState",
    "ProjectionWorker",
    "ReadStore",
    "ReadTransaction",
    "RebuildProgress",
    "Table",
    "fetch_page",
    "handles",
    "keyset_sql",
    "partition_of",
    "position_from_headers",
    "position_header",
    "read_store_from_url",
    "rebuild",
    "wait_for_position",
]


def read_store_from_url(url: str) -> ReadStore:
    """A read store for ``sqlite:///path.db`` or ``postgresql://...[?schema=name]``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from obelisk.projections._sqlite_read import SQLiteReadStore

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError(f"{url!r} names no file: use sqlite:///path/to/read.db")
        return SQLiteReadStore(path)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from obelisk.projections._pg_read import PostgresReadStore
        except ImportError as exc:  # pragma: no cover - asyncpg is a dependency of the extra
            raise ValueError(f"{url!r} needs asyncpg: pip install 'obelisk[postgres]'") from exc
        options = parse_qs(parts.query)
        schema = options.pop("schema", ["public"])[-1]
        if options:
            raise ValueError(f"unknown read store option(s) {sorted(options)} in {url!r}")
        dsn = parts._replace(query="").geturl()
        return PostgresReadStore(dsn, schema=schema)
    raise ValueError(
        f"unsupported read store URL {url!r}: use sqlite:///path.db or postgresql://..."
    )
