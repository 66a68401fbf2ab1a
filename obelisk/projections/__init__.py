"""CQRS read side: projections, their runner, read stores, rebuilds and workers."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlencode, urlsplit

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
    """A read store for ``sqlite:///path.db`` or ``postgresql://...`` (options:
    ``schema=name``, ``synchronous_commit=on|off``; others go to the driver)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from obelisk.projections._sqlite_read import SQLiteReadStore

        if parts.netloc:
            raise ValueError(f"{url!r} has a host; use sqlite:///path/to/read.db")
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ValueError(f"{url!r} names no file: use sqlite:///path/to/read.db")
        sqlite_options = parse_qs(parts.query)
        busy = sqlite_options.pop("busy_timeout", ["10"])[-1]
        if sqlite_options:
            raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(sqlite_options))}")
        try:
            busy_timeout = float(busy)
        except ValueError:
            raise ValueError(f"{url!r}: busy_timeout must be seconds, got {busy!r}") from None
        return SQLiteReadStore(path, busy_timeout=busy_timeout)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from obelisk.projections._pg_read import PostgresReadStore
        except ImportError as exc:  # pragma: no cover - asyncpg is a dependency of the extra
            raise ValueError(f"{url!r} needs asyncpg: pip install 'obelisk[postgres]'") from exc
        options = parse_qs(parts.query)
        schema = options.pop("schema", ["public"])[-1]
        synchronous = options.pop("synchronous_commit", ["off"])[-1]
        if synchronous not in ("on", "off"):
            raise ValueError(f"{url!r}: synchronous_commit must be on or off")
        # What is left (sslmode, ...) belongs to the driver, as for the event store.
        query = urlencode({k: v[-1] for k, v in options.items()})
        dsn = parts._replace(query=query).geturl()
        return PostgresReadStore(dsn, schema=schema, synchronous_commit=synchronous == "on")
    raise ValueError(
        f"unsupported read store URL {url!r}: use sqlite:///path.db or postgresql://..."
    )
