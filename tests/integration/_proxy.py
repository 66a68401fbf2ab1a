"""A TCP proxy that can cut every connection: a network outage on demand, in one process."""

from __future__ import annotations

import asyncio
import contextlib

from obelisk.servers._host import free_port

__all__ = ["Proxy"]


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``.

    ``cut()`` drops every connection and refuses new ones (as a crashed host would) until
    ``resume()`` listens again on the same port.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()
        self._writers.discard(sink)

    async def cut(self) -> None:
        """Close the listener and every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Abort before waiting for the listener: from Python 3.12 wait_closed() also waits
        # for the connections it accepted.
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def resume(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
