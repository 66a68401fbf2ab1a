"""A throwaway PostgreSQL server for tests and benchmarks.

``ThrowawayPostgres`` runs ``initdb`` into a fresh temporary folder, starts the server on a free
local port (TCP on 127.0.0.1 only, its Unix socket inside that folder) and deletes everything
again on ``stop()``. It needs PostgreSQL's server binaries (``initdb``, ``pg_ctl``, ``postgres``)
on this machine, nothing else: no running cluster, no system service, no password.

Run ``python -m obelisk.servers.postgres`` to get a server by hand: it prints the DSN and stops
the server on Ctrl-C or SIGTERM.

Standard library only: ``obelisk bench --store postgresql://auto`` uses it without the
development extras.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from obelisk.servers import _host as _pg_host
from obelisk.servers._host import INSTALL_HINT, find_postgres_bin

__all__ = ["INSTALL_HINT", "ThrowawayPostgres", "find_postgres_bin", "main"]

_DB_USER = "postgres"
_START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 5
_LOG_NAME = "server.log"
_CONF_NAME = "obelisk.conf"


class ThrowawayPostgres:
    """A private PostgreSQL server in a temporary folder, deleted on ``stop()``.

    The server listens on 127.0.0.1 only, trusts every local connection (user ``postgres``,
    no password) and runs with ``fsync`` and ``synchronous_commit`` on, so durability tests and
    benchmarks measure what a real deployment pays. ``start``, ``stop`` and ``restart`` block
    for a second or two: from async code call them through ``asyncio.to_thread``.

    Example:
        >>> with ThrowawayPostgres() as pg:  # doctest: +SKIP
        ...     print(pg.dsn)
        postgresql://postgres@127.0.0.1:41234/postgres
    """

    def __init__(
        self,
        *,
        fsync: bool = True,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; nothing runs until ``start()``.

        Args:
            fsync: Run with ``fsync=on`` (the default). ``False`` trades crash safety for speed.
            port: A fixed TCP port; by default a free one is picked (and another one tried if
                it is taken before the server binds it).
            settings: ``postgresql.conf`` settings that override the defaults, e.g.
                ``{"max_connections": "50"}``. ``port`` and ``listen_addresses`` are not
                allowed here.

        Raises:
            ValueError: A setting is reserved, or its name or value cannot be written safely.
        """
        self._settings = _pg_host.checked_settings(settings or {})
        self._fsync = fsync
        self._fixed_port = port
        self._port: int | None = None
        self._data_dir: Path | None = None
        self._bindir: Path | None = None
        # stop() may come from atexit or another thread while a test restarts the server.
        self._lock = threading.RLock()

    @property
    def dsn(self) -> str:
        """The connection string, ``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://{_DB_USER}@{_pg_host.HOST}:{self.port}/postgres"

    @property
    def port(self) -> int:
        """The TCP port the server listens on (while started)."""
        self._require_started()
        assert self._port is not None
        return self._port

    @property
    def data_dir(self) -> Path:
        """The server's data folder (while started); it also holds the log and the socket."""
        return self._require_started()

    def start(self) -> str:
        """Create the cluster, start the server and wait until it accepts connections.

        Returns:
            The DSN.

        Raises:
            RuntimeError: Already started, binaries missing, or the server did not start (the
                message ends with the server log's last lines). Nothing is left behind.
        """
        with self._lock:
            if self._data_dir is not None:
                raise RuntimeError(f"{self!r} is already started")
            self._bindir = find_postgres_bin()
            owner = _pg_host.server_owner()
            self._data_dir = Path(
                tempfile.mkdtemp(prefix="obelisk-pg-", dir=_pg_host.temp_parent(owner))
            )
            try:
                self._create_cluster(owner)
                self._start_on_a_free_port()
            except BaseException:
                self.stop()
                raise
            # A forgotten stop() would otherwise leave a server running after Python exits.
            atexit.register(self.stop)
            return self.dsn

    def stop(self) -> None:
        """Shut the server down (fast mode) and delete its folder.

        Idempotent, and safe after a failed ``start()``. If a fast shutdown fails, an immediate
        one is tried, then the postmaster is killed: the folder goes either way.
        """
        with self._lock:
            data_dir = self._data_dir
            if data_dir is None:
                return
            try:
                self._shutdown(data_dir)
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
                self._data_dir = None
                self._port = None
                atexit.unregister(self.stop)

    def restart(self) -> None:
        """Stop the server (fast mode: open connections are cut) and start it again.

        The data folder and the port stay the same, so clients reconnect with the same DSN.
        A server that is already down (say, a test killed it) is just started again.

        Raises:
            RuntimeError: Not started, or the server did not come back.
        """
        with self._lock:
            data_dir = self._require_started()
            if (data_dir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(_START_TIMEOUT_S))
            # The port was ours a moment ago; only a rare client socket can hold it now.
            for attempt in range(3):
                try:
                    self._pg_ctl_start(data_dir)
                    return
                except _PortInUse as e:
                    if attempt == 2:
                        raise RuntimeError(f"cannot restart on port {self._port}:\n{e}") from e
                    time.sleep(0.5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"port={self._port}, data_dir={self._data_dir}" if self._data_dir else "stopped"
        return f"ThrowawayPostgres({where})"

    # -- internals ------------------------------------------------------------------------

    def _require_started(self) -> Path:
        if self._data_dir is None or self._port is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._data_dir

    def _create_cluster(self, owner: tuple[int, int] | None) -> None:
        data_dir = self._data_dir
        assert data_dir is not None
        if owner is not None:
            os.chown(data_dir, *owner)
        self._run(
            "initdb",
            "-D", str(data_dir),
            "--auth=trust",
            "-U", _DB_USER,
            "--encoding=UTF8",
            "--locale=C",
            # Skips only initdb's own flush of the new files; the server keeps fsync on.
            "--no-sync",
        )  # fmt: skip
        # Our settings live in their own file (written before each start) so a port change
        # rewrites it whole, and postgresql.conf keeps initdb's defaults for anyone reading it.
        with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(
                f"\n# Added by obelisk.servers.postgres: overrides the above.\n"
                f"include '{_CONF_NAME}'\n"
            )

    def _start_on_a_free_port(self) -> None:
        data_dir = self._data_dir
        assert data_dir is not None
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for attempt in range(attempts):
            # The port is free now but nothing holds it until the postmaster binds it, so
            # another process can take it in between: then pick another one.
            self._port = self._fixed_port if self._fixed_port is not None else _pg_host.free_port()
            _pg_host.write_owned(
                data_dir / _CONF_NAME, self._conf_text(data_dir), _pg_host.server_owner()
            )
            try:
                self._pg_ctl_start(data_dir)
                return
            except _PortInUse as e:
                if attempt == attempts - 1:
                    raise RuntimeError(f"port {self._port} is in use:\n{e}") from e

    def _conf_text(self, data_dir: Path) -> str:
        settings = {
            "listen_addresses": _pg_host.HOST,
            "port": str(self._port),
            # Never the system's /var/run/postgresql: it may not exist or belong to a cluster.
            "unix_socket_directories": str(data_dir),
            "fsync": "on" if self._fsync else "off",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            # pg_ctl -l sends the server's stderr to a file in the data folder.
            "logging_collector": "off",
        }
        settings.update(self._settings)
        return "".join(f"{name} = {_pg_host.quote(value)}\n" for name, value in settings.items())

    def _pg_ctl_start(self, data_dir: Path) -> None:
        log = data_dir / _LOG_NAME
        offset = log.stat().st_size if log.exists() else 0
        result = self._run(
            "pg_ctl", "start", "-D", str(data_dir), "-l", str(log),
            "-w", "-t", str(_START_TIMEOUT_S),
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return
        tail = _pg_host.log_tail(log, offset)
        if "Address already in use" in tail:
            raise _PortInUse(tail)
        raise RuntimeError(
            f"PostgreSQL did not start (pg_ctl exit {result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}\n"
            f"--- last lines of the server log ---\n{tail}"
        )

    def _shutdown(self, data_dir: Path) -> None:
        pid_file = data_dir / "postmaster.pid"
        for mode in ("fast", "immediate"):
            if not pid_file.exists():
                return
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(_START_TIMEOUT_S), check=False)
        # Both shutdowns failed: kill the postmaster so the folder is not in use any more.
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", *args, "-D", str(self._data_dir), check=check)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None and self._data_dir is not None
        argv = _pg_host.as_server_user([str(self._bindir / tool), *args])
        # LC_ALL=C: messages we search ("Address already in use") are never translated.
        env = {**os.environ, "LC_ALL": "C"}
        env.pop("PGDATA", None)
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            # The server user may not be able to enter our working directory (e.g. /root).
            cwd=self._data_dir,
            env=env,
            timeout=_START_TIMEOUT_S * 2,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


class _PortInUse(Exception):
    """The server could not bind its TCP port."""


def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, print its DSN, and stop it on SIGINT or SIGTERM.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m obelisk.servers.postgres",
        description="Run a throwaway PostgreSQL server until Ctrl-C; print its DSN.",
    )
    parser.add_argument("--port", type=int, help="TCP port (default: a free one)")
    parser.add_argument("--no-fsync", action="store_true", help="run with fsync=off")
    parser.add_argument(
        "-c", dest="settings", action="append", default=[], metavar="NAME=VALUE",
        help="a postgresql.conf setting (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings: dict[str, str] = {}
    for item in args.settings:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-c wants NAME=VALUE, got {item!r}")
        settings[name.strip()] = value.strip()

    stop_requested = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    # Handlers go in before the server starts so a signal during start still cleans up.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = ThrowawayPostgres(fsync=not args.no_fsync, port=args.port, settings=settings)
    try:
        try:
            dsn = server.start()
        except (RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(dsn, flush=True)
        print(f"data folder {server.data_dir}; Ctrl-C stops and deletes it", file=sys.stderr)
        stop_requested.wait()
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
