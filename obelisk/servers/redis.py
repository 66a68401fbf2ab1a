"""A throwaway Redis server: a temporary folder, a free port on 127.0.0.1, append-only file on.

The append-only file (fsync every second) keeps streams and consumer groups across
``restart()``, as a production Redis configured for durability would.
"""

from __future__ import annotations

from pathlib import Path

from obelisk.servers._process import ThrowawayProcess

__all__ = ["ThrowawayRedis"]


class ThrowawayRedis(ThrowawayProcess):
    """``with ThrowawayRedis() as redis: redis.url`` -> ``redis://127.0.0.1:PORT/0``."""

    binary = "redis-server"
    install_hint = "`apt-get install -y redis-server` on Debian or Ubuntu"
    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, executable: str, port: int, folder: Path) -> list[str]:
        return [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip

    def ready(self, port: int) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
