"""A throwaway NATS server with JetStream: a temporary folder, a free port on 127.0.0.1.

JetStream's file store lives in the folder, so streams and consumers survive ``restart()``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from obelisk.servers._host import free_port
from obelisk.servers._process import ThrowawayProcess

__all__ = ["ThrowawayNats"]


class ThrowawayNats(ThrowawayProcess):
    """``with ThrowawayNats() as nats: nats.url`` -> ``nats://127.0.0.1:PORT``."""

    binary = "nats-server"
    install_hint = "`apt-get install -y nats-server` on Debian or Ubuntu"
    name = "nats"

    def __init__(self) -> None:
        super().__init__()
        self._monitor: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self, executable: str, port: int, folder: Path) -> list[str]:
        if self._monitor is None:
            self._monitor = free_port()
        return [
            executable,
            "-a", "127.0.0.1",
            "-p", str(port),
            "-m", str(self._monitor),
            "-js",
            "-sd", str(folder / "jetstream"),
        ]  # fmt: skip

    def ready(self, port: int) -> bool:
        # Ready means JetStream is up, not only the port: its monitoring endpoint says so.
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self._monitor}/healthz?js-enabled-only=true", timeout=0.5
            ) as response:
                return bool(json.loads(response.read()).get("status") == "ok")
        except (OSError, ValueError):
            return False
