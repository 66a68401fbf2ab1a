"""A server process in a temporary folder on a free local port: the part Redis and NATS share.

Subclasses say how to build the command line and how to tell the server is ready; this
class starts it, waits, restarts it on the same port and folder (so durable data survives,
as a real restart would), and stops it, deleting the folder.
"""

from __future__ import annotations

import abc
import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from obelisk.servers._host import HOST, free_port

__all__ = ["ThrowawayProcess"]

_START_TIMEOUT_S = 30.0


class ThrowawayProcess(abc.ABC):
    """A private server process; ``start``/``stop``/``restart`` block briefly (use
    ``asyncio.to_thread`` from async code)."""

    binary: str
    install_hint: str
    name: str

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def folder(self) -> Path:
        if self._folder is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._folder

    @abc.abstractmethod
    def command(self, executable: str, port: int, folder: Path) -> list[str]:
        """The command line that runs the server on ``port`` with its data in ``folder``."""

    def ready(self, port: int) -> bool:
        """Whether the server answers (default: it accepts TCP connections)."""
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    def find(self) -> str:
        found = shutil.which(self.binary) or next(
            (str(p) for p in (Path("/usr/sbin") / self.binary, Path("/usr/bin") / self.binary)
             if p.exists()),
            None,
        )  # fmt: skip
        if found is None:
            raise RuntimeError(f"{self.binary} is not installed: {self.install_hint}")
        return found

    def start(self) -> Self:
        executable = self.find()
        self._folder = Path(tempfile.mkdtemp(prefix=f"obelisk-{self.name}-"))
        self._log = self._folder / "server.log"
        last_error = ""
        for _ in range(5):  # a free port can be taken between the check and the bind
            self._port = free_port()
            try:
                self._launch(executable)
                atexit.register(self.stop)
                return self
            except RuntimeError as exc:
                last_error = str(exc)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {last_error}")

    def _launch(self, executable: str) -> None:
        assert self._folder is not None and self._log is not None and self._port is not None
        log = self._log.open("ab")
        try:
            self._process = subprocess.Popen(
                self.command(executable, self._port, self._folder),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._folder,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            if self.ready(self._port):
                return
            time.sleep(0.02)
        self._kill()
        raise RuntimeError(f"{self.name} not ready after {_START_TIMEOUT_S}s: {self.log_tail()}")

    def log_tail(self) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])

    def _kill(self, graceful: bool = True) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if graceful:
            process.terminate()
            try:
                process.wait(10)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait(10)

    def restart(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``) and start it again on the same
        port with the same data folder."""
        self._kill(graceful=not kill)
        self._launch(self.find())

    def stop(self) -> None:
        self._kill()
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
