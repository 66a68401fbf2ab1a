"""``obelisk serve`` at its default log level: a 500 leaves its traceback in the server's
log (stderr), and the client gets a bare 500; a hostile body is a 400 that logs nothing.

The service is the deployed flash sale with one collaborator broken by the test's own
module (``tests/e2e/_failing_flashsale.py``): no route exists for the test's sake.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from pathlib import Path

from examples.flashsale.client import HttpClient, HttpError

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_500_under_obelisk_serve_logs_its_traceback_and_tells_the_client_nothing(
    tmp_path: Path,
) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "obelisk", "serve", "tests.e2e._failing_flashsale:app",
            "--port", str(port), "--app-dir", str(ROOT),
            "--store", f"sqlite:///{tmp_path / 'events.db'}",
            "--read-store", f"sqlite:///{tmp_path / 'read.db'}",
            stdout=out, stderr=out, cwd=ROOT,
        )  # fmt: skip
    client = HttpClient("127.0.0.1", port, timeout=10)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(HttpError):
                if (await client.request("GET", "/health")).status == 200:
                    break
            assert process.returncode is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            await asyncio.sleep(0.1)

        failed = await client.request("GET", "/sections/sec/availability")
        nested = await client.request(
            "POST", "/sections", b'{"section_id": "s", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
        )
    finally:
        await client.close()
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()

    assert failed.status == 500
    assert b"lost a column" not in failed.body and b"Traceback" not in failed.body
    assert nested.status == 400, nested.body
    text = log.read_text(errors="replace")
    assert "GET /sections/sec/availability: 500, unhandled KeyError" in text, text
    assert "Traceback (most recent call last)" in text and "in _broken" in text, text
    assert "lost a column" in text
    assert text.count("Traceback") == 1, text  # the 400 logged nothing
