"""`obelisk metrics`: a store's metrics over HTTP, and once on stdout."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from typer.testing import CliRunner

from obelisk.cli import app as cli_app
from obelisk.demo.bank import AccountOpened
from obelisk.observability.serve import StoreMetrics, serve_store_metrics
from obelisk.store import NO_STREAM, SQLiteEventStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _get(port: int, method: str = "GET") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_scrape_sees_the_store_and_its_last_position(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "m.db")
    await store.open()
    await store.append("a", [AccountOpened(owner="ada")], NO_STREAM)
    metrics = StoreMetrics(store)
    port = _free_port()
    ready = asyncio.Event()
    server = asyncio.create_task(serve_store_metrics(metrics, "127.0.0.1", port, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        answer = await _get(port)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"obelisk_store_up 1.0" in answer
        assert b"obelisk_store_last_position 1.0" in answer
        await store.append("b", [AccountOpened(owner="bob")], NO_STREAM)
        assert b"obelisk_store_last_position 2.0" in await _get(port)
        assert (await _get(port, "POST")).startswith(b"HTTP/1.1 405")
        await store.close()  # the store goes away: the scrape says so, and does not fail
        assert b"obelisk_store_up 0.0" in await _get(port)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await store.close()


def test_once_prints_the_exposition_and_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"

    async def seed() -> None:
        async with SQLiteEventStore(path) as store:
            await store.append("a", [AccountOpened(owner="ada")], NO_STREAM)

    asyncio.run(seed())
    result = CliRunner().invoke(cli_app, ["metrics", f"sqlite:///{path}", "--once"])
    assert result.exit_code == 0, result.output
    assert "obelisk_store_last_position 1.0" in result.stdout
    missing = CliRunner().invoke(cli_app, ["metrics", f"sqlite:///{tmp_path / 'no.db'}", "--once"])
    assert missing.exit_code == 2 and not (tmp_path / "no.db").exists()


def test_an_unsupported_url_exits_2_with_a_message() -> None:
    result = CliRunner().invoke(cli_app, ["metrics", "nosuch://x", "--once"])
    assert result.exit_code == 2
    assert "unsupported store URL" in result.output
