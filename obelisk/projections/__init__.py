"""CQRS read side: projections, their runner, read stores, rebuilds and workers."""

from __future__ import annotations

from urllib.parse import unquote, urlencode

from obelisk.errors import ValidationError
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
from obelisk.store.url_options import file_path, number_option, split_url, url_options

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
    """A read store for ``sqlite:///path.db`` (option ``busy_timeout=SECONDS``) or
    ``postgresql://...`` (options ``schema=name``, ``synchronous_commit=on|off``; others
    go to the driver).

    Raises:
        ValidationError: a URL this cannot use (a ``ValueError``): the message says why.
    """
    parts = split_url(url, "read store")
    if parts.scheme == "sqlite":
        from obelisk.projections._sqlite_read import SQLiteReadStore

        if parts.netloc:
            raise ValidationError(f"{url!r} has a host; use sqlite:///path/to/read.db")
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ValidationError(f"{url!r} names no file: use sqlite:///path/to/read.db")
        path = file_path(url, path)
        sqlite_options = url_options(url, parts, ("busy_timeout",))
        busy = number_option(url, sqlite_options, "busy_timeout", float)
        if sqlite_options:
            raise ValidationError(f"{url!r}: unknown option(s) {', '.join(sorted(sqlite_options))}")
        return SQLiteReadStore(path, busy_timeout=10.0 if busy is None else busy)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from obelisk.projections._pg_read import PostgresReadStore
        except ImportError as exc:  # pragma: no cover - asyncpg is a dependency of the extra
            raise ValidationError(
                f"{url!r} needs asyncpg: pip install 'obelisk[postgres]'"
            ) from exc
        options = url_options(url, parts, ("schema", "synchronous_commit"))
        schema = options.pop("schema", "public")
        synchronous = options.pop("synchronous_commit", "off")
        if synchronous not in ("on", "off"):
            raise ValidationError(f"{url!r}: synchronous_commit must be on or off")
        # What is left (sslmode, ...) belongs to the driver, as for the event store.
        dsn = parts._replace(query=urlencode(options)).geturl()
        return PostgresReadStore(dsn, schema=schema, synchronous_commit=synchronous == "on")
    if parts.scheme == "memory":
        raise ValidationError(
            f"read store URL {url!r}: there is no in-memory read store (yet); use "
            "sqlite:///path.db (a file in a temporary folder for tests) or postgresql://..."
        )
    raise ValidationError(
        f"unsupported read store URL {url!r}: use sqlite:///path.db or postgresql://..."
    )
