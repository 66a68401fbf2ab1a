"""Pool connections kept between uses.

Borrowing from asyncpg's pool for every statement costs several event-loop turns (a
future per acquire and per release, a shielded release task): measured at about a third
of the client's time for a one-row read. The writer and the readers instead keep the
connections they used, up to a bound, and give back only those beyond it or broken ones
(the pool replaces those).
"""

from __future__ import annotations

import logging

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["ConnectionShelf"]

_log = logging.getLogger("obelisk.store.postgres")


class ConnectionShelf:
    """Up to ``keep`` connections borrowed from ``pool`` once and reused."""

    def __init__(self, pool: asyncpg.Pool, keep: int) -> None:
        self._pool = pool
        self._keep = keep
        self._free: list[PoolConnectionProxy] = []
        self._closing = False

    async def take(self) -> PoolConnectionProxy:
        """A kept connection, or a new one from the pool."""
        if self._free:
            return self._free.pop()
        return await self._pool.acquire()

    def keep(self, conn: PoolConnectionProxy) -> bool:
        """Keep ``conn`` for the next use if it is healthy and there is room; else False."""
        try:
            healthy = not conn.is_closed()
        except asyncpg.exceptions.InterfaceError:
            return True  # the pool was terminated under us: nothing left to give back
        if healthy and not self._closing and len(self._free) < self._keep:
            self._free.append(conn)
            return True
        return False

    async def give_back(self, conn: PoolConnectionProxy) -> None:
        """Keep ``conn`` for the next use, or return it to the pool."""
        if self.keep(conn):
            return
        try:
            await self._pool.release(conn)
        except Exception as exc:  # a dead connection or a closing pool: nothing to keep
            _log.debug("releasing a kept connection failed: %s", exc)

    async def release_all(self) -> None:
        """Return every kept connection to the pool; later ones go straight back."""
        self._closing = True
        free, self._free = self._free, []
        for conn in free:
            await self.give_back(conn)
