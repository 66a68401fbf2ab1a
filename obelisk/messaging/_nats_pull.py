"""Pulling from a durable JetStream consumer for NatsBroker's ``consume``.

Why not nats-py's ``PullSubscription.fetch``: once its long-poll request got a first
message it waits for the whole batch until the timeout, so a consumer asking for 100
messages with ``wait=1`` receives a lone message a second late. The port promises to wait
only while there is nothing. So each fetch here:

1. takes what earlier requests delivered and nobody took yet;
2. asks for what is available now (``no_wait``: the server answers at once, ending with a
   404 or 408 status);
3. only if that was nothing, waits up to ``wait`` for one message (``batch`` 1, server-side
   ``expires``), then asks again with ``no_wait`` for whatever else is there.

Every request has its own reply subject, so a status from an old request (one the client
stopped waiting for, or one cut by a reconnect) is not taken for the end of the current
one. Messages carry their own subject, not the request's: whichever request brought them,
they are deliveries of this consumer and are kept.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from typing import Any, Final

from obelisk.errors import BrokerError

__all__ = ["Puller"]

_MARGIN: Final = 0.25  # past a long poll's expiry, how long to wait for its end status


class Puller:
    """Pull requests of one obelisk consumer on a durable JetStream consumer."""

    def __init__(self, nc: Any, stream: str, durable: str, *, timeout: float) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._timeout = timeout
        self._ids = itertools.count()
        self._current = ""
        self._ended: str | None = None
        self._messages: collections.deque[Any] = collections.deque()
        self._arrived = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            self._messages.append(msg)
            self._arrived.set()
        elif status != "100" and msg.subject.endswith("." + self._current):
            # 404 no messages, 408 expired or fulfilled in part, 409 a limit or the consumer
            # was deleted: the current request is over. (100 is a heartbeat.)
            self._ended = f"{status} {headers.get('Description', '')}".strip()
            self._arrived.set()

    async def fetch(self, limit: int, wait: float) -> list[Any]:
        """Up to ``limit`` messages: those available at once, else the first to come
        within ``wait`` seconds and those available with it."""
        out: list[Any] = []
        self._take(out, limit)
        if len(out) < limit:
            await self._request(out, limit, {"batch": limit - len(out), "no_wait": True})
        if not out and wait > 0:
            expires = int(wait * 1e9)
            await self._request(out, 1, {"batch": 1, "expires": expires}, wait + _MARGIN)
            if out and limit > 1:
                await self._request(out, limit, {"batch": limit - 1, "no_wait": True})
        return out

    def _take(self, out: list[Any], limit: int) -> None:
        while self._messages and len(out) < limit:
            out.append(self._messages.popleft())

    async def _request(
        self, out: list[Any], limit: int, request: dict[str, Any], bound: float | None = None
    ) -> None:
        self._current = str(next(self._ids))
        self._ended = None
        self._arrived.clear()
        await self._nc.publish(
            self._next, json.dumps(request).encode(), reply=f"{self._inbox}.{self._current}"
        )
        deadline = time.monotonic() + (self._timeout if bound is None else bound)
        while True:
            self._take(out, limit)
            if len(out) >= limit or self._ended is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # no answer: a reconnect lost the request; what came is kept
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        ended = self._ended or ""
        if ended.startswith("409") and "deleted" in ended.lower():
            raise BrokerError(f"nats: the consumer was deleted ({ended})")
