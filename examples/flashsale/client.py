"""A small HTTP/1.1 client for the demo's buyers: one keep-alive connection each, asyncio
streams, ``content-length`` and chunked bodies. (Each buyer waits for its answer before
the next request, as a person at a browser does, so one connection per buyer is enough.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["HttpClient", "HttpError", "HttpResponse"]


class HttpError(Exception):
    """The connection failed or the server's answer was not HTTP/1.1 we understand."""


class _Stale(Exception):
    """A kept-alive connection the server had closed: the request never reached it."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpClient:
    """One keep-alive connection to ``host:port`` (reconnects after the server closes)."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._reader = self._writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request and read its whole answer; one retry on a connection the
        server had closed while idle."""
        for attempt in (1, 2):
            fresh = self._writer is None
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(method, path, body, headers or {})
            except _Stale as exc:
                # The server had closed the idle connection: nothing of this request was
                # taken, so sending it again is safe (even a POST).
                await self.close()
                if fresh or attempt == 2:
                    raise HttpError(f"{method} {path}: {exc!r}") from exc
            except (OSError, asyncio.IncompleteReadError, HttpError, TimeoutError) as exc:
                await self.close()  # it may have been taken: not sent again
                raise HttpError(f"{method} {path}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> HttpResponse:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        if body or method in ("POST", "PUT"):
            lines.append("content-type: application/json")
            lines.append(f"content-length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            status_line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale("the connection was closed before an answer") from exc
            raise
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        found: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            found[name.strip().lower()] = value.strip()
        if "content-length" in found:
            data = await reader.readexactly(int(found["content-length"]))
        elif found.get("transfer-encoding", "").lower() == "chunked":
            data = await _read_chunked(reader)
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await reader.read()  # until the server closes
            await self.close()
        if found.get("connection", "").lower() == "close":
            await self.close()
        return HttpResponse(status, found, data)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
