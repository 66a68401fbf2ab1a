"""Whole-stream loads requested together share one query.

Aggregates are loaded by many concurrent commands at once (each a cache miss). Each load
alone is a round trip whose client-side cost is several times the server's; the loads asked
for during one event-loop iteration instead travel as one ``stream_id = ANY(...)`` query,
which walks the (stream_id, version) index once per stream and returns every stream's rows
in version order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["StreamLoader"]

Rows = list[Any]


class StreamLoader:
    """Batches whole-stream loads (see the module notes).

    ``fetch_one(stream_id)`` returns the rows of one stream; ``fetch_many(stream_ids)``
    returns rows whose first column is the stream id, ordered by stream and version.
    """

    def __init__(
        self,
        fetch_one: Callable[[str], Awaitable[Sequence[Any]]],
        fetch_many: Callable[[list[str]], Awaitable[Sequence[Any]]],
    ) -> None:
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many
        self._pending: dict[str, list[asyncio.Future[Rows]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0
        self.loads = 0

    def load(self, stream_id: str) -> asyncio.Future[Rows]:
        """The rows of ``stream_id``, from the next batch of loads."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Rows] = loop.create_future()
        if not self._pending:
            # The task's first step comes in the next iteration: every load asked for
            # until then joins this one.
            task = loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._pending.setdefault(stream_id, []).append(future)
        return future

    async def _run(self) -> None:
        pending, self._pending = self._pending, {}
        self.queries += 1
        self.loads += len(pending)
        try:
            if len(pending) == 1:
                (stream_id,) = pending
                by_stream = {stream_id: list(await self._fetch_one(stream_id))}
            else:
                by_stream = {stream_id: [] for stream_id in pending}
                for row in await self._fetch_many(list(pending)):
                    by_stream[row[0]].append(row[1:])
        except BaseException as exc:
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for stream_id, futures in pending.items():
            rows = by_stream[stream_id]
            for future in futures:
                if not future.done():
                    future.set_result(rows)
