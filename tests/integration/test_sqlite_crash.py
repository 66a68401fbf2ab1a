"""SIGKILL during a storm of concurrent appends: nothing acknowledged is lost.

``_crash_writer.py`` runs in a child process and prints every event the store
acknowledged. The test kills it with SIGKILL mid-storm (no cleanup, no checkpoint, a hot
WAL left behind), reopens the file with a fresh store and checks every printed event, the
gap-free positions and the per-stream versions. It repeats that on the same file, so
later rounds also start from a database recovered after a crash.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from obelisk.domain.events import Event
from obelisk.store import SQLiteEventStore, StoredEvent

_WRITER = Path(__file__).with_name("_crash_writer.py")
_TASKS = 32
_TIMEOUT = 60  # seconds for one round; a hang fails the test instead of blocking CI

Ack = tuple[str, int, int]  # stream, version, position


class CrashTicked(Event):
    """The same stored type as ``_crash_writer.CrashTicked`` (that runs in the child)."""

    event_type = "test_sqlite_crash.Ticked"
    task: int
    index: int
    count: int


async def _run_and_kill(path: Path, synchronous: str, kill_after: int, log: Path) -> list[Ack]:
    """Run the writer until it acknowledged ``kill_after`` events, SIGKILL it, return acks."""
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(_WRITER),
            str(path),
            str(_TASKS),
            synchronous,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    acks: list[Ack] = []
    try:
        async with asyncio.timeout(_TIMEOUT):
            while len(acks) < kill_after:
                line = await proc.stdout.readline()
                if not line.endswith(b"\n"):
                    pytest.fail(f"the writer stopped early:\n{_tail(log)}")
                acks.append(_parse(line))
            proc.send_signal(signal.SIGKILL)
            # Lines already in the pipe were acknowledged before the kill: check them too.
            # A line cut short by the kill is not a whole acknowledgement; skip it.
            rest = await proc.stdout.read()
            acks.extend(_parse(line) for line in rest.splitlines(keepends=True)
                        if line.endswith(b"\n"))
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return acks


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


def _parse(line: bytes) -> Ack:
    stream, version, position = line.split()
    return stream.decode(), int(version), int(position)


async def _read_everything(path: Path) -> tuple[list[StoredEvent], dict[str, int]]:
    async with SQLiteEventStore(path) as store:
        events: list[StoredEvent] = []
        while True:
            page = await store.read_all(after=events[-1].position if events else 0, limit=5000)
            if not page:
                break
            events.extend(page)
        heads = {f"crash-{t}": await store.stream_version(f"crash-{t}") for t in range(_TASKS)}
    return events, heads


def _check(events: list[StoredEvent], heads: dict[str, int], acks: list[Ack]) -> None:
    # Positions are 1..N, no gap, no duplicate.
    assert [e.position for e in events] == list(range(1, len(events) + 1))

    # Every acknowledged event is there, at the exact position it was acknowledged with.
    assert len(set(acks)) == len(acks)
    assert len(events) >= len(acks)
    for stream, version, position in acks:
        stored = events[position - 1]
        assert (stored.stream_id, stored.version) == (stream, version), (stream, version, position)

    by_stream: defaultdict[str, list[StoredEvent]] = defaultdict(list)
    for e in events:
        by_stream[e.stream_id].append(e)
    for stream, stream_events in by_stream.items():
        # Versions run 1, 2, 3, ... in position order, and the stream head agrees.
        assert [e.version for e in stream_events] == list(range(1, len(stream_events) + 1))
        assert heads[stream] == len(stream_events)
        # Appends are atomic: events come in whole groups (index 0..count-1 of one append).
        expected_index = 0
        for e in stream_events:
            ticked = e.event
            assert isinstance(ticked, CrashTicked)
            assert stream == f"crash-{ticked.task}"
            assert ticked.index == expected_index, e
            expected_index = (ticked.index + 1) % ticked.count
        assert expected_index == 0, f"{stream} ends with a partial append"


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_a_sigkilled_writer_loses_no_acknowledged_append(
    tmp_path: Path, synchronous: str, loop_errors: list[object]
) -> None:
    path = tmp_path / "events.db"
    log = tmp_path / "writer-stderr.log"
    all_acks: list[Ack] = []
    # Kill at different points, each time on the database the previous crash left behind.
    for kill_after in (2000, 700, 1500):
        acks = await _run_and_kill(path, synchronous, kill_after, log)
        assert len(acks) >= kill_after
        all_acks.extend(acks)
        events, heads = await _read_everything(path)
        _check(events, heads, all_acks)
    # Every round added events after what the earlier rounds left.
    assert len(events) >= 2000 + 700 + 1500
