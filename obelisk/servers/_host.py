"""What ThrowawayPostgres needs from the machine: binaries, a user, a folder, a port.

Kept apart from ``obelisk.servers.postgres`` so the server's lifecycle reads on its own;
standard library only.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "HOST",
    "INSTALL_HINT",
    "RESERVED_SETTINGS",
    "SERVER_OS_USER",
    "as_server_user",
    "checked_settings",
    "find_postgres_bin",
    "free_port",
    "log_tail",
    "quote",
    "server_owner",
    "temp_parent",
    "write_owned",
]

INSTALL_HINT = (
    "install PostgreSQL's server binaries (initdb, pg_ctl, postgres): "
    "`apt-get install -y postgresql` on Debian or Ubuntu"
)

DEBIAN_ROOT = Path("/usr/lib/postgresql")
# initdb and postgres refuse to run as root; Debian's package creates this system user.
SERVER_OS_USER = "postgres"
HOST = "127.0.0.1"
LOG_TAIL_LINES = 30
# Settings the DSN depends on: they have their own arguments or are fixed.
RESERVED_SETTINGS = frozenset({"port", "listen_addresses"})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def find_postgres_bin() -> Path:
    """Find the folder holding PostgreSQL's ``initdb`` and ``pg_ctl``.

    Looks in Debian's ``/usr/lib/postgresql/<version>/bin`` (highest version first), then at
    ``pg_config --bindir``, then on ``PATH``.

    Returns:
        The bin folder.

    Raises:
        RuntimeError: No PostgreSQL server binaries are installed; the message says what to
            install.
    """
    if DEBIAN_ROOT.is_dir():
        versions: list[tuple[tuple[int, ...], Path]] = []
        for child in DEBIAN_ROOT.iterdir():
            if re.fullmatch(r"\d+(\.\d+)*", child.name) and _has_tools(child / "bin"):
                versions.append((tuple(int(p) for p in child.name.split(".")), child / "bin"))
        if versions:
            return max(versions)[1]
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        # Debian's client-only packages ship pg_config without the server binaries.
        if out and _has_tools(Path(out)):
            return Path(out)
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Resolve symlinks: pg_ctl looks for `postgres` next to its real file.
        bindir = Path(initdb).resolve().parent
        if _has_tools(bindir):
            return bindir
    raise RuntimeError(
        f"PostgreSQL server binaries not found (looked in {DEBIAN_ROOT}/*/bin, "
        f"`pg_config --bindir` and PATH): {INSTALL_HINT}"
    )


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))


def server_owner() -> tuple[int, int] | None:
    """The (uid, gid) the server runs as when we are root, else None (it runs as us)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, which initdb refuses, and there is no {SERVER_OS_USER!r} user "
            f"to run it as: {INSTALL_HINT} (it creates the user), or "
            f"`useradd --system {SERVER_OS_USER}`"
        ) from None
    return entry.pw_uid, entry.pw_gid


def as_server_user(argv: list[str]) -> list[str]:
    """Wrap a command so it runs as the server's OS user when we are root."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", SERVER_OS_USER, "--", *argv]
    su = shutil.which("su")
    if su is not None:
        return [su, SERVER_OS_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
    raise RuntimeError("running as root, but neither `runuser` nor `su` is installed")


def temp_parent(owner: tuple[int, int] | None) -> str | None:
    """Where to make the data folder: the usual temp dir, unless the server user cannot reach it.

    As root, TMPDIR may point somewhere private (e.g. under /root). Rather than loosen the
    permissions of folders we do not own, fall back to /tmp, which everyone can traverse.
    """
    if owner is None:
        return None
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp")):
        if _traversable_by_others(candidate):
            return str(candidate)
    raise RuntimeError(
        f"the {SERVER_OS_USER!r} user cannot reach {tempfile.gettempdir()} or /tmp: "
        "set TMPDIR to a folder every user can traverse"
    )


def _traversable_by_others(folder: Path) -> bool:
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents))
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def write_owned(path: Path, text: str, owner: tuple[int, int] | None) -> Path:
    """Write a private file that the server's OS user owns."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    if owner is not None:
        os.chown(path, *owner)
    return path


def log_tail(log: Path, offset: int) -> str:
    """The last lines of the server log written after byte ``offset``."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def checked_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """Refuse settings that are reserved or could inject more lines into the config file."""
    checked: dict[str, str] = {}
    for name, value in settings.items():
        if name.lower() in RESERVED_SETTINGS:
            raise ValueError(f"setting {name!r} is managed by ThrowawayPostgres")
        if not _SETTING_NAME.match(name):
            raise ValueError(f"not a setting name: {name!r}")
        if any(c in value for c in "\n\r\0"):
            raise ValueError(f"setting {name!r} has a line break or NUL in its value")
        checked[name] = value
    return checked


def quote(value: str) -> str:
    """A postgresql.conf string literal."""
    # postgresql.conf strings take backslash escapes and doubled quotes.
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'"
