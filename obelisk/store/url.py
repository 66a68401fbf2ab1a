"""Build an event store from a URL: ``sqlite:///path``, ``memory://``."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from obelisk.store.base import EventStore
from obelisk.store.codec import codec_by_name
from obelisk.store.memory import MemoryEventStore
from obelisk.store.sqlite import SQLiteEventStore

__all__ = ["store_from_url"]


def store_from_url(url: str) -> EventStore:
    """The event store a URL names.

    * ``memory://`` — in process memory (users' unit tests).
    * ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; query options
      ``synchronous=FULL|NORMAL``, ``codec=json|msgpack``, ``busy_timeout=SECONDS``.
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
            path, synchronous=synchronous, codec=codec, busy_timeout=busy  # type: ignore[arg-type]
        )
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path.db or memory://")


def _no_more(options: dict[str, str], url: str) -> None:
    if options:
        raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(options))}")
