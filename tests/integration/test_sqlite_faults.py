"""The SQLite store under real faults: a read-only file, another process's lock, a full disk.

What every case checks (the issue's words): each pending append gets a clear obelisk error,
never a raw ``sqlite3`` exception, and no acknowledged append is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from obelisk.domain.events import Event
from obelisk.errors import StoreError, StoreUnavailable
from obelisk.store import NO_STREAM, AppendResult, SQLiteEventStore

from ._helpers import assert_gap_free, spy_on_writer_connection

_NOBODY = 65534  # the conventional unprivileged uid/gid ("nobody"/"nogroup")
_SUBPROCESS_TIMEOUT = 60


class FaultNoted(Event):
    event_type = "test_sqlite_faults.Noted"
    n: int
    pad: str = ""


def _notes(*numbers: int) -> list[FaultNoted]:
    return [FaultNoted(n=n) for n in numbers]


def _raw_rows(path: Path) -> list[tuple[int, str, int]]:
    """(position, stream, version) of every row, read with a plain read-only connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT position, stream_id, version FROM obelisk_events ORDER BY position"
        ).fetchall()
    finally:
        conn.close()




# -- read-only database ------------------------------------------------------------------

# Runs in a child process. As root it drops to an unprivileged user first (root ignores
# permission bits); everything it needs is imported before that, because the interpreter
# and the virtualenv may live where the unprivileged user cannot read.
_READ_ONLY_PROBE = textwrap.dedent(
    """
    import asyncio, concurrent.futures.thread, json, os, sqlite3, sys, threading
    from obelisk.domain.events import Event
    from obelisk.errors import ObeliskError
    from obelisk.store import SQLiteEventStore

    class FaultNoted(Event):
        event_type = "test_sqlite_faults.Noted"
        n: int
        pad: str = ""

    def describe(outcome):
        if not isinstance(outcome, BaseException):
            return {"type": "ok"}
        return {
            "type": type(outcome).__name__,
            "module": type(outcome).__module__,
            "obelisk": isinstance(outcome, ObeliskError),
            "store_error": type(outcome).__name__ in ("StoreUnavailable", "StoreError"),
            "message": str(outcome),
        }

    async def main(path, uid):
        if uid >= 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        report = {"euid": os.geteuid(), "writable": os.access(path, os.W_OK)}
        store = SQLiteEventStore(path, busy_timeout=0.2)
        try:
            await store.open()
        except BaseException as exc:
            report["open"] = describe(exc)
        else:
            report["open"] = {"type": "ok"}
        # Several appends pending at once, whether or not the store managed to open.
        outcomes = await asyncio.gather(
            *(store.append(f"ro-{i}", [FaultNoted(n=i)]) for i in range(8)),
            return_exceptions=True,
        )
        report["appends"] = [describe(o) for o in outcomes]
        if report["open"]["type"] == "ok":
            report["read"] = [e.event.n for e in await store.read_stream("before")]
        await store.close()
        report["threads"] = sorted(t.name for t in threading.enumerate())
        print(json.dumps(report), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh folder an unprivileged user can reach (pytest's tmp_path may be 0700)."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="obelisk-ro-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)


def _set_modes(path: Path, file_mode: int, folder_mode: int) -> None:
    path.chmod(file_mode)
    path.parent.chmod(folder_mode)


def _run_read_only_probe(path: Path) -> dict[str, object]:
    uid = _NOBODY if os.geteuid() == 0 else -1
    done = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_PROBE, str(path), str(uid)],
        capture_output=True,
        text=True,
        timeout=_SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if report["writable"]:
        pytest.skip("file permissions are not enforced for this user: cannot make a read-only file")
    return report


@pytest.mark.parametrize(
    "folder_mode",
    [
        pytest.param(0o555, id="file-and-folder-read-only"),
        pytest.param(0o777, id="file-read-only-folder-writable"),
    ],
)
async def test_a_read_only_database_fails_every_pending_append_clearly_and_keeps_its_data(
    shared_tmp: Path, folder_mode: int, loop_errors: list[object]
) -> None:
    path = shared_tmp / "events.db"
    async with SQLiteEventStore(path) as store:
        await store.append("before", _notes(1, 2, 3), NO_STREAM)
    _set_modes(path, 0o444, folder_mode)

    report = _run_read_only_probe(path)
    if os.geteuid() == 0:
        assert report["euid"] == _NOBODY  # the probe really ran unprivileged

    opened = report["open"]
    appends = report["appends"]
    assert isinstance(opened, dict) and isinstance(appends, list)
    if opened["type"] == "ok":
        # The store opened for reading: it still serves the old data, and every append
        # fails with the read-only cause named.
        assert report["read"] == [1, 2, 3]
        for outcome in appends:
            assert outcome["type"] == "StoreUnavailable", outcome
            assert "read-only" in outcome["message"] or "readonly" in outcome["message"]
    else:
        # A WAL database that cannot be written cannot be opened by the writer; the
        # failure names the file and the cause, as an obelisk error.
        assert opened["store_error"], opened
        assert opened["module"] == "obelisk.errors", opened
        assert str(path) in opened["message"]
        assert "readonly" in opened["message"] or "read-only" in opened["message"], opened
        for outcome in appends:
            assert outcome["obelisk"] and outcome["module"] == "obelisk.errors", outcome
            assert outcome["store_error"] or outcome["type"] == "StoreClosed", outcome
    # A failed open leaves no writer thread behind.
    assert "obelisk-sqlite-writer" not in report["threads"]  # type: ignore[operator]

    # What was written before is intact: readable right away, with the file still read-only...
    assert _raw_rows(path) == [(1, "before", 1), (2, "before", 2), (3, "before", 3)]
    # ...and, once the file is writable again, by a store that keeps appending after it.
    _set_modes(path, 0o644, 0o755)
    async with SQLiteEventStore(path) as store:
        assert await store.read_stream_events("before") == _notes(1, 2, 3)
        for i in range(8):
            assert await store.stream_version(f"ro-{i}") == 0
        result = await store.append("after", _notes(4))
        assert result.last_position == 4
        assert_gap_free(await store.read_all())


# -- locked by another process -----------------------------------------------------------

_LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
    conn.close()
    print("released", flush=True)
    """
)


@pytest.fixture
async def lock_holder() -> AsyncIterator[_LockHolder]:
    holder = _LockHolder()
    try:
        yield holder
    finally:
        await holder.kill()


class _LockHolder:
    """A separate process that holds ``BEGIN EXCLUSIVE`` on a database until released."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def lock(self, path: Path) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOCK_HOLDER,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
            assert await self._proc.stdout.readline() == b"locked\n"

    async def release(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"release\n")
        await proc.stdin.drain()
        async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
            assert await proc.stdout.readline() == b"released\n"
            assert await proc.wait() == 0

    async def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_appends_fail_clearly_while_another_process_holds_the_lock_and_resume_after(
    tmp_path: Path, lock_holder: _LockHolder, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path, busy_timeout=0.2) as store:
        await store.append("before", _notes(1, 2, 3), NO_STREAM)

        await lock_holder.lock(path)
        async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
            outcomes = await asyncio.gather(
                *(store.append(f"locked-{i}", _notes(i, i), NO_STREAM) for i in range(8)),
                return_exceptions=True,
            )
            # A lone append gets the same clear error.
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.append("alone", _notes(0))
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), outcome
            assert "locked" in str(outcome)
            assert "not written" in str(outcome)
        # WAL readers do not need the write lock: reads keep working meanwhile.
        assert await store.last_position() == 3
        assert await store.read_stream_events("before") == _notes(1, 2, 3)

        await lock_holder.release()
        results = await asyncio.gather(
            *(store.append(f"after-{i}", _notes(i), NO_STREAM) for i in range(8))
        )
        assert sorted(r.last_position for r in results) == list(range(4, 12))
        events = await store.read_all()
        assert_gap_free(events)
        assert {e.stream_id for e in events} == {"before"} | {f"after-{i}" for i in range(8)}
        for i in range(8):
            assert await store.stream_version(f"locked-{i}") == 0
        assert await store.stream_version("alone") == 0


async def test_a_lone_append_waiting_for_a_lock_lets_the_loop_release_that_lock(
    tmp_path: Path, lock_holder: _LockHolder, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteEventStore(path, busy_timeout=5.0)
    opened = spy_on_writer_connection(store)
    async with store:
        await store.append("before", _notes(1))
        batch_started = threading.Event()
        # The writer is idle now, so its connection can be configured from here.
        opened[0].set_trace_callback(
            lambda sql: batch_started.set() if sql.startswith("BEGIN IMMEDIATE") else None
        )
        await lock_holder.lock(path)

        async def release_once_the_append_waits() -> None:
            assert await asyncio.to_thread(batch_started.wait, _SUBPROCESS_TIMEOUT)
            await lock_holder.release()

        # The lock is released by a task on this same loop. If the append blocked the
        # loop while waiting, the release could only run after the busy timeout expired
        # and the append would fail; with the loop free it gets the lock and succeeds.
        releaser = asyncio.create_task(release_once_the_append_waits())
        try:
            async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
                outcome = (
                    await asyncio.gather(store.append("alone", _notes(2)), return_exceptions=True)
                )[0]
        finally:
            await releaser
        assert isinstance(outcome, AppendResult), outcome
        assert outcome.last_position == 2


async def test_a_lock_error_keeps_the_driver_error_as_its_cause(
    tmp_path: Path, lock_holder: _LockHolder, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path, busy_timeout=0.2) as store:
        await lock_holder.lock(path)
        with pytest.raises(StoreUnavailable) as caught:
            await store.append("alone", _notes(1))
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


# -- disk full ---------------------------------------------------------------------------


async def _fill(store: SQLiteEventStore, limit: int) -> tuple[list[AppendResult], StoreError]:
    """Append until the store refuses; return the acknowledged results and the refusal."""
    acked: list[AppendResult] = []
    for i in range(limit):
        try:
            acked.append(await store.append(f"fill-{i % 7}", [FaultNoted(n=i, pad="x" * 400)]))
        except StoreError as exc:
            return acked, exc
    pytest.fail(f"the store accepted {limit} appends without filling up")


async def _assert_full_store_consistent(
    store: SQLiteEventStore, acked: Sequence[AppendResult]
) -> None:
    events = await store.read_all(limit=1_000_000)
    assert_gap_free(events)
    # Exactly the acknowledged appends are stored, each where it was acknowledged.
    assert [(e.stream_id, e.version, e.position) for e in events] == [
        (r.stream_id, r.version, r.last_position) for r in acked
    ]
    assert [e.event for e in events] == [
        FaultNoted(n=i, pad="x" * 400) for i in range(len(acked))
    ]


async def test_a_full_database_fails_appends_clearly_and_keeps_every_acknowledged_one(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    async with SQLiteEventStore(path, max_size_bytes=256 * 1024) as store:
        acked, refusal = await _fill(store, 5000)
        assert acked, "the quota left no room for a single append"
        assert isinstance(refusal, StoreUnavailable)
        assert "full" in str(refusal)

        # Every append pending while the store is full gets the error too.
        async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
            outcomes = await asyncio.gather(
                *(store.append(f"pending-{i}", [FaultNoted(n=-i, pad="y" * 400)])
                  for i in range(8)),
                return_exceptions=True,
            )
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), outcome
            assert "full" in str(outcome)

        # The store stays usable for reading.
        assert await store.last_position() == len(acked)
        await _assert_full_store_consistent(store, acked)

    # With room again (a bigger quota), appends continue right after the last one.
    async with SQLiteEventStore(path, max_size_bytes=4 * 1024 * 1024) as store:
        await _assert_full_store_consistent(store, acked)
        result = await store.append("after", _notes(1))
        assert result.last_position == len(acked) + 1
        for i in range(8):
            assert await store.stream_version(f"pending-{i}") == 0


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A real 512 KiB filesystem, so the disk itself runs out of space."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="obelisk-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        timeout=_SUBPROCESS_TIMEOUT,
        check=False,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], timeout=_SUBPROCESS_TIMEOUT, check=True)
        folder.rmdir()


async def test_a_full_disk_fails_appends_clearly_and_keeps_every_acknowledged_one(
    small_tmpfs: Path, loop_errors: list[object]
) -> None:
    path = small_tmpfs / "events.db"
    async with SQLiteEventStore(path) as store:
        acked, refusal = await _fill(store, 5000)
        assert acked, "the filesystem left no room for a single append"
        assert isinstance(refusal, StoreUnavailable)
        assert "full" in str(refusal)
        assert os.statvfs(small_tmpfs).f_bavail == 0  # really the disk, not a quota

        async with asyncio.timeout(_SUBPROCESS_TIMEOUT):
            outcomes = await asyncio.gather(
                *(store.append(f"pending-{i}", [FaultNoted(n=-i, pad="y" * 400)])
                  for i in range(8)),
                return_exceptions=True,
            )
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), outcome
            assert "full" in str(outcome)
        await _assert_full_store_consistent(store, acked)

    # After a restart on the still-full disk, every acknowledged append is there.
    rows = _raw_rows(path)
    assert rows == [(r.last_position, r.stream_id, r.version) for r in acked]
    async with SQLiteEventStore(path) as store:
        await _assert_full_store_consistent(store, acked)

