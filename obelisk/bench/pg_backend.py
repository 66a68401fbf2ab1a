"""PostgreSQL as a bench backend: a fresh schema per run, on a given or throwaway server.

Every run (each side of each repetition) gets its own schema, created by obelisk's store
when it first opens it and dropped after the run, so runs never see each other's rows and
the server is left as it was found. With ``postgresql://auto`` the bench starts a
:class:`~obelisk.servers.postgres.ThrowawayPostgres` (fsync and synchronous_commit on, as a
real deployment runs) and stops it at the end, even when a run fails.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from obelisk.bench.backends import Backend
from obelisk.bench.measure import BenchError
from obelisk.bench.raw_postgres import RawPostgresBaseline
from obelisk.servers.postgres import ThrowawayPostgres
from obelisk.store.base import EventStore
from obelisk.store.postgres import PostgresEventStore

__all__ = ["AUTO_HOST", "PostgresBackend", "postgres_backend"]

AUTO_HOST: Final = "auto"
"""``postgresql://auto``: the host name that asks for a throwaway server."""

# Store options a bench URL may carry (to measure other pool or batch settings); schema,
# prefix and codec are the bench's business, so they are refused rather than ignored.
_STORE_OPTIONS: Final = ("pool_min_size", "pool_max_size", "max_in_flight", "max_batch")
_REFUSED: Final = ("schema", "prefix", "codec")
_LABEL = re.compile(r"[^a-z0-9_]+")
_SCHEMA_MAX: Final = 40  # what PostgresEventStore accepts as a schema name


def postgres_backend(url: str) -> PostgresBackend:
    """The backend a ``--store postgresql://...`` option names; BenchError if malformed.

    ``postgresql://auto`` starts a throwaway server; any other URL is a server the bench
    may create (and drop) schemas in. Query options ``pool_min_size``, ``pool_max_size``,
    ``max_in_flight`` and ``max_batch`` configure obelisk's store; the rest goes to the
    driver (on both sides).
    """
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    refused = sorted(key for key in options if key in _REFUSED)
    if refused:
        raise BenchError(f"{url!r}: the bench sets {', '.join(refused)} itself; remove it")
    store_options: dict[str, Any] = {}
    try:
        for key in _STORE_OPTIONS:
            if key in options:
                store_options[key] = int(options.pop(key))
        # Built once, unopened, only to have the store's own checks refuse bad values now.
        PostgresEventStore("postgresql://check", **store_options)
    except ValueError as exc:
        raise BenchError(f"{url!r}: {exc}") from None
    try:
        port = parts.port
    except ValueError as exc:
        raise BenchError(f"{url!r}: {exc}") from None
    if parts.hostname == AUTO_HOST:
        if port or parts.username or parts.path.strip("/") or options:
            raise BenchError(
                f"{url!r}: postgresql://auto takes only store options ({', '.join(_STORE_OPTIONS)})"
            )
        return PostgresBackend(None, store_options)
    return PostgresBackend(urlunsplit(parts._replace(query=urlencode(options))), store_options)


class PostgresBackend(Backend):
    """A PostgreSQL server, one fresh schema per run.

    Args:
        dsn: the server to use; None starts a throwaway one in :meth:`start`.
        store_options: keyword arguments for every :class:`PostgresEventStore` made.
    """

    name = "postgresql"

    def __init__(self, dsn: str | None, store_options: Mapping[str, int] | None = None) -> None:
        self._given_dsn = dsn
        self.store_options: dict[str, Any] = dict(store_options or {})
        self._server: ThrowawayPostgres | None = None
        self._admin: asyncpg.Connection | None = None
        self._dsn: str | None = None
        # A random part keeps two benches on one server (or a crashed run's leftovers)
        # from ever choosing the same schema.
        self._token = secrets.token_hex(3)
        self._count = 0
        self._schemas: set[str] = set()
        self._facts: dict[str, str] = {}

    @property
    def dsn(self) -> str:
        """The server's connection URI (once started)."""
        if self._dsn is None:
            raise BenchError("the PostgreSQL backend is not started")
        return self._dsn

    @property
    def settings(self) -> dict[str, str]:
        """The server facts the report names (version, fsync, synchronous_commit)."""
        return dict(self._facts)

    async def start(self) -> None:
        dsn = self._given_dsn
        if dsn is None:
            dsn = await self._start_server()
        try:
            self._admin = await asyncpg.connect(dsn, timeout=30)
            for name in ("server_version", "fsync", "synchronous_commit"):
                self._facts[name] = str(await self._admin.fetchval(f"SHOW {name}"))
        except Exception as exc:  # refused, unknown database, bad password, bad URI, ...
            raise BenchError(f"cannot use PostgreSQL at {_where(dsn)}: {exc}") from exc
        self._dsn = dsn
        self.raw = RawPostgresBaseline(dsn)

    async def _start_server(self) -> str:
        # fsync and synchronous_commit on (the helper's defaults): what production pays.
        server = ThrowawayPostgres()
        self._server = server
        try:
            return await asyncio.to_thread(server.start)
        except (RuntimeError, OSError) as exc:
            raise BenchError(f"could not start a throwaway PostgreSQL server: {exc}") from exc

    async def stop(self) -> None:
        admin, self._admin = self._admin, None
        try:
            if admin is not None:
                # Schemas of runs that failed before their discard: leave the server clean.
                for schema in sorted(self._schemas):
                    try:
                        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                    except Exception:  # the server is gone: nothing left to clean there
                        break
                self._schemas.clear()
                try:
                    await asyncio.wait_for(admin.close(), 10)
                except Exception:
                    admin.terminate()
        finally:
            server, self._server = self._server, None
            if server is not None:
                await asyncio.to_thread(server.stop)

    def describe(self) -> str:
        facts = self._facts
        where = (
            f"a throwaway server at {_where(self.dsn)} started by the bench"
            if self._given_dsn is None
            else f"the server at {_where(self.dsn)}"
        )
        store = PostgresEventStore(self.dsn, **self.store_options)
        return (
            f"PostgreSQL {facts.get('server_version', '?')}, "
            f"fsync={facts.get('fsync', '?')}, "
            f"synchronous_commit={facts.get('synchronous_commit', '?')}, {where}; "
            f"store pool_max_size={store.pool_max_size}, max_in_flight={store.max_in_flight}, "
            f"a fresh schema per run"
        )

    def fresh(self, label: str) -> str:
        self._count += 1
        name = f"bench_{self._token}_{self._count:03d}_{_LABEL.sub('_', label.lower())}"
        name = name[:_SCHEMA_MAX]
        self._schemas.add(name)
        return name

    def make_store(self, location: str) -> EventStore:
        return PostgresEventStore(self.dsn, schema=location, **self.store_options)

    async def discard(self, location: str) -> None:
        if self._admin is None:
            raise BenchError("the PostgreSQL backend is not started")
        await self._admin.execute(f'DROP SCHEMA IF EXISTS "{location}" CASCADE')
        self._schemas.discard(location)


def _where(dsn: str) -> str:
    # Host, port and database only: a password in the URI never reaches a report.
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"
