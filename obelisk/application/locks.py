"""A keyed asyncio lock: commands on one aggregate run one at a time in a process.

Serialising per aggregate id means two commands on one account never race to the same
expected version inside a process (no wasted retries), and it is what will let a cached
aggregate stay current. Ownership is handed straight to the next waiter, first come first
served, and a key with nobody holding or waiting costs no memory.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["KeyedLock"]


class KeyedLock:
    """Mutual exclusion per key; ``await acquire(key)`` then ``release(key)``."""

    def __init__(self) -> None:
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def locked(self, key: str) -> bool:
        """Whether some task holds ``key``."""
        return key in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    async def acquire(self, key: str) -> None:
        """Wait until ``key`` is free, then hold it."""
        queue = self._waiters.get(key)
        if queue is None:
            self._waiters[key] = deque()  # held, nobody waiting: the fast path
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # ownership arrived as we were cancelled: pass it on
            else:
                try:
                    queue.remove(future)
                except ValueError:
                    pass
            raise

    def release(self, key: str) -> None:
        """Give ``key`` to the next waiter, or free it."""
        queue = self._waiters.get(key)
        if queue is None:
            raise RuntimeError(f"release of {key!r}, which is not held")
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return
        del self._waiters[key]
