"""Build an event store from a URL: ``sqlite:///path``, ``memory://``."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, unquote, urlencode, urlunsplit

from obelisk.errors import ValidationError
from obelisk.store.base import EventStore
from obelisk.store.codec import EventCodec, codec_by_name
from obelisk.store.memory import MemoryEventStore
from obelisk.store.sqlite import SQLiteEventStore
from obelisk.store.url_options import file_path, number_option, split_url, url_options

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

    Raises:
        ValidationError: a URL this cannot use (a ``ValueError``): the message says why.
    """
    parts = split_url(url, "store")
    options = url_options(url, parts, _OWN)
    codec = _codec(options.pop("codec", "json"))
    if parts.scheme == "memory":
        _no_more(options, url)
        return MemoryEventStore(codec=codec)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise ValidationError(f"{url!r}: write sqlite:///relative.db or sqlite:////abs/path.db")
        path = file_path(url, path[1:] if path.startswith("/") else path)
        synchronous = options.pop("synchronous", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ValidationError(f"{url!r}: synchronous must be FULL or NORMAL")
        busy = number_option(url, options, "busy_timeout", float)
        _no_more(options, url)
        return SQLiteEventStore(
            path,
            synchronous=synchronous,  # type: ignore[arg-type]
            codec=codec,
            busy_timeout=5.0 if busy is None else busy,
        )
    if parts.scheme in ("postgresql", "postgres"):
        return _postgres(url, parts, options, codec)
    raise ValidationError(
        f"unsupported store URL {url!r}: use sqlite:///path.db, postgresql://... or memory://"
    )


_PG_INTS = ("pool_min_size", "pool_max_size", "max_in_flight")
_PG_FLOATS = ("statement_timeout", "lock_timeout")
# obelisk's own options: an empty value of one is refused, not taken for its default.
_OWN = frozenset(
    ("codec", "synchronous", "busy_timeout", "schema", "prefix", *_PG_INTS, *_PG_FLOATS)
)


def _codec(name: str) -> EventCodec:
    try:
        return codec_by_name(name)
    except ValueError as exc:  # an unknown name: the message lists the codecs
        raise ValidationError(str(exc)) from None


def _postgres(
    url: str, parts: SplitResult, options: dict[str, str], codec: EventCodec
) -> EventStore:
    try:
        from obelisk.store.postgres import PostgresEventStore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValidationError(f"{url!r} needs asyncpg: pip install 'obelisk[postgres]'") from exc
    kwargs: dict[str, Any] = {"codec": codec}
    for key in ("schema", "prefix"):
        if key in options:
            kwargs[key] = options.pop(key)
    for key in _PG_INTS:
        if (number := number_option(url, options, key, int)) is not None:
            kwargs[key] = number
    for key in _PG_FLOATS:
        if (seconds := number_option(url, options, key, float)) is not None:
            kwargs[key] = seconds
    # What is left (sslmode, ...) belongs to the driver.
    dsn = urlunsplit(parts._replace(query=urlencode(options)))
    return PostgresEventStore(dsn, **kwargs)


def _no_more(options: dict[str, str], url: str) -> None:
    if options:
        raise ValidationError(f"{url!r}: unknown option(s) {', '.join(sorted(options))}")
