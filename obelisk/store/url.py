"""Build an event store from a URL: ``sqlite:///path``, ``memory://``."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlencode, urlsplit, urlunsplit

from obelisk.store.base import EventStore
from obelisk.store.codec import EventCodec, codec_by_name
from obelisk.store.memory import MemoryEventStore
from obelisk.store.sqlite import SQLiteEventStore

__all__ = ["store_from_url"]


def store_from_url(url: str) -> EventStore:
    """The event store a URL names.

    * ``memory://`` — in process memory (users' unit tests).
    * ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; query options
      ``synchronous=FULL|NORMAL``, ``codec=json|msgpack``, ``busy_timeout=SECONDS``.
    * ``postgresql://user:password@host:port/database`` (or ``postgres://``); obelisk's
      own query options ``schema``, ``prefix``, ``codec``, ``pool_min_size``,
      ``pool_max_size``, ``max_in_flight``, ``statement_timeout``, ``lock_timeout`` are
      taken out, the rest (``sslmode=...``) goes to the driver.
    """
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    codec = codec_by_name(options.pop("codec", "json"))
    if parts.scheme == "memory":
        _no_more(options, url)
        return MemoryEventStore(codec=codec)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise ValueError(f"{url!r}: write sqlite:///relative.db or sqlite:////abs/path.db")
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError(f"{url!r} names no database file")
        synchronous = options.pop("synchronous", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"{url!r}: synchronous must be FULL or NORMAL")
        busy = float(options.pop("busy_timeout", "5"))
        _no_more(options, url)
        return SQLiteEventStore(
            path,
            synchronous=synchronous,  # type: ignore[arg-type]
            codec=codec,
            busy_timeout=busy,
        )
    if parts.scheme in ("postgresql", "postgres"):
        return _postgres(url, parts, options, codec)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db, postgresql://... or memory://"
    )


_PG_INTS = ("pool_min_size", "pool_max_size", "max_in_flight")
_PG_FLOATS = ("statement_timeout", "lock_timeout")


def _postgres(
    url: str, parts: SplitResult, options: dict[str, str], codec: EventCodec
) -> EventStore:
    try:
        from obelisk.store.postgres import PostgresEventStore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(f"{url!r} needs asyncpg: pip install 'obelisk[postgres]'") from exc
    kwargs: dict[str, Any] = {"codec": codec}
    for key in ("schema", "prefix"):
        if key in options:
            kwargs[key] = options.pop(key)
    try:
        for key in _PG_INTS:
            if key in options:
                kwargs[key] = int(options.pop(key))
        for key in _PG_FLOATS:
            if key in options:
                kwargs[key] = float(options.pop(key))
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from exc
    # What is left (sslmode, ...) belongs to the driver.
    dsn = urlunsplit(parts._replace(query=urlencode(options)))
    return PostgresEventStore(dsn, **kwargs)


def _no_more(options: dict[str, str], url: str) -> None:
    if options:
        raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(options))}")
