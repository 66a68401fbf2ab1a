"""The throwaway PostgreSQL server that the PostgreSQL tests and benchmarks run against."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from obelisk.servers import _host as _pg_host
from obelisk.servers import postgres as pgserver
from obelisk.servers.postgres import ThrowawayPostgres, find_postgres_bin

CONFTEST = Path(__file__).parents[1] / "conftest.py"


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A local port that a listening socket holds for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def made_folders(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every folder ThrowawayPostgres makes during the test."""
    made: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def spy(*args: object, **kwargs: object) -> str:
        folder = mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
        made.append(Path(folder))
        return folder

    monkeypatch.setattr(pgserver.tempfile, "mkdtemp", spy)
    return made


async def fetch_setting(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        value: str = await conn.fetchval(f"SHOW {name}")
        return value
    finally:
        await conn.close()


async def test_the_server_accepts_connections_with_fsync_and_synchronous_commit_on(
    server: ThrowawayPostgres,
) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT 1 + 1") == 2
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW max_connections") == "200"
        assert int(await conn.fetchval("SHOW server_version_num")) >= 150000
    finally:
        await conn.close()


async def test_the_dsn_names_the_postgres_user_on_localhost_and_the_port(
    server: ThrowawayPostgres,
) -> None:
    assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/postgres", server.dsn)
    assert server.dsn.endswith(f":{server.port}/postgres")
    assert await fetch_setting(server.dsn, "port") == str(server.port)


async def test_the_unix_socket_lives_in_the_data_folder(server: ThrowawayPostgres) -> None:
    assert await fetch_setting(server.dsn, "unix_socket_directories") == str(server.data_dir)
    assert (server.data_dir / f".s.PGSQL.{server.port}").is_socket()
    conn = await asyncpg.connect(host=str(server.data_dir), port=server.port, user="postgres")
    await conn.close()


async def test_the_session_fixtures_serve_their_own_server(
    postgres_server: ThrowawayPostgres | None, postgres_dsn: str
) -> None:
    if postgres_server is None:
        pytest.skip("OBELISK_TEST_POSTGRES_DSN is set: the session uses that server")
    assert postgres_dsn == postgres_server.dsn
    assert await fetch_setting(postgres_dsn, "fsync") == "on"


async def test_a_restart_keeps_the_data_and_the_port(server: ThrowawayPostgres) -> None:
    dsn, data_dir = server.dsn, server.data_dir
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    finally:
        await conn.close()

    await asyncio.to_thread(server.restart)

    assert (server.dsn, server.data_dir) == (dsn, data_dir)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT n FROM kept") == 42
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") > started
        await conn.execute("DROP TABLE kept")
    finally:
        await conn.close()


async def test_a_restart_brings_back_a_crashed_server_with_its_committed_data(
    server: ThrowawayPostgres,
) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute("CREATE TABLE survived (n int); INSERT INTO survived VALUES (7)")
    finally:
        await conn.close()
    # An immediate shutdown skips the checkpoint: the restart runs crash recovery.
    await asyncio.to_thread(server._pg_ctl, "stop", "-m", "immediate", "-w")
    with pytest.raises(OSError):
        await asyncpg.connect(server.dsn, timeout=10)

    await asyncio.to_thread(server.restart)

    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT n FROM survived") == 7
        await conn.execute("DROP TABLE survived")
    finally:
        await conn.close()


async def test_a_restart_cuts_open_connections(server: ThrowawayPostgres) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await asyncio.to_thread(server.restart)
        with pytest.raises(asyncpg.InterfaceError):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    assert await fetch_setting(server.dsn, "fsync") == "on"


async def test_two_servers_at_once_get_different_ports_and_their_own_settings(
    server: ThrowawayPostgres,
) -> None:
    with ThrowawayPostgres(fsync=False, settings={"work_mem": "8MB"}) as other:
        assert other.port != server.port
        assert other.data_dir != server.data_dir
        assert await fetch_setting(other.dsn, "fsync") == "off"
        assert await fetch_setting(other.dsn, "work_mem") == "8MB"
        assert await fetch_setting(server.dsn, "fsync") == "on"


async def test_stop_removes_the_folder_and_is_idempotent() -> None:
    pg = ThrowawayPostgres()
    dsn = pg.start()
    data_dir = pg.data_dir
    assert data_dir.is_dir()

    pg.stop()
    pg.stop()

    assert not data_dir.exists()
    with pytest.raises(RuntimeError, match="not started"):
        _ = pg.dsn
    with pytest.raises(OSError):
        await asyncpg.connect(dsn, timeout=10)


def test_a_failed_start_raises_with_the_server_log_and_leaves_no_folder(
    made_folders: list[Path],
) -> None:
    pg = ThrowawayPostgres(settings={"shared_buffers": "plenty"})
    with pytest.raises(RuntimeError, match=r"(?s)did not start.*shared_buffers"):
        pg.start()
    assert len(made_folders) == 1
    assert not made_folders[0].exists()
    pg.stop()


def test_a_picked_port_that_is_taken_is_traded_for_another(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken_port])
    free_port = _pg_host.free_port
    monkeypatch.setattr(_pg_host, "free_port", lambda: next(ports, None) or free_port())
    with ThrowawayPostgres() as pg:
        assert pg.port != taken_port
        assert next(ports, None) is None  # the taken port was really tried first


def test_a_fixed_port_that_is_taken_fails_clearly(
    taken_port: int, made_folders: list[Path]
) -> None:
    with pytest.raises(RuntimeError, match=f"port {taken_port} is in use"):
        ThrowawayPostgres(port=taken_port).start()
    assert not made_folders[0].exists()


@pytest.mark.parametrize(
    "settings",
    [
        {"port": "5432"},
        {"listen_addresses": "*"},
        {"bad name": "1"},
        {"work_mem": "1MB\nfsync=off"},
    ],
)
def test_settings_that_would_break_the_server_or_its_dsn_are_refused(
    settings: dict[str, str],
) -> None:
    with pytest.raises(ValueError):
        ThrowawayPostgres(settings=settings)


def fake_bindir(folder: Path, tools: tuple[str, ...] = ("initdb", "pg_ctl")) -> Path:
    folder.mkdir(parents=True)
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\n")
        (folder / tool).chmod(0o755)
    return folder


def test_find_postgres_bin_prefers_the_highest_complete_debian_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bindir(tmp_path / "9.6" / "bin")
    expected = fake_bindir(tmp_path / "15" / "bin")
    fake_bindir(tmp_path / "16" / "bin", tools=("pg_ctl",))  # client-only: no initdb
    monkeypatch.setattr(_pg_host, "DEBIAN_ROOT", tmp_path)
    assert find_postgres_bin() == expected


def test_find_postgres_bin_falls_back_to_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = fake_bindir(tmp_path / "bin")
    monkeypatch.setattr(_pg_host, "DEBIAN_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(expected))
    assert find_postgres_bin() == expected


def test_find_postgres_bin_says_what_to_install_when_nothing_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pg_host, "DEBIAN_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"apt-get install -y postgresql"):
        find_postgres_bin()


async def test_pg_schema_teardown_drops_the_schema(
    server: ThrowawayPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run a test that uses the fixtures in a child pytest, pointed at our server.
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    (tmp_path / "test_inner.py").write_text(
        "from pathlib import Path\n"
        "import asyncpg\n\n"
        "def test_the_environment_dsn_means_no_server(postgres_server):\n"
        "    assert postgres_server is None\n\n"
        "async def test_make_the_schema(pg_schema, postgres_dsn):\n"
        "    conn = await asyncpg.connect(postgres_dsn)\n"
        "    try:\n"
        '        await conn.execute(f\'CREATE SCHEMA "{pg_schema}"; '
        'CREATE TABLE "{pg_schema}".t (n int)\')\n'
        "    finally:\n"
        "        await conn.close()\n"
        "    Path('schema.txt').write_text(pg_schema)\n"
    )
    monkeypatch.setenv("OBELISK_TEST_POSTGRES_DSN", server.dsn)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout

    schema = (tmp_path / "schema.txt").read_text()
    assert re.fullmatch(r"t_[0-9a-f]{32}", schema)
    conn = await asyncpg.connect(server.dsn)
    try:
        found = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    finally:
        await conn.close()
    assert found == 0


async def test_the_command_line_prints_a_dsn_and_cleans_up_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "obelisk.servers.postgres",
        "-c",
        "work_mem=6MB",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        dsn = (await proc.stdout.readline()).decode().strip()
        note = (await proc.stderr.readline()).decode()
        data_dir = Path(note.split()[2].rstrip(";"))
        assert await asyncio.to_thread(data_dir.is_dir), note
        assert await fetch_setting(dsn, "work_mem") == "6MB"

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert not await asyncio.to_thread(data_dir.exists)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
