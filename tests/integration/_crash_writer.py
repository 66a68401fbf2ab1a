"""A storm of concurrent appends for the crash test; it runs until it is killed.

Usage: ``python _crash_writer.py DATABASE TASKS SYNCHRONOUS``

Each task appends batches of one to three events to its own stream with the expected
version, and after every acknowledged append prints one line per event,
``stream version position``, flushed at once. A line on stdout therefore means the
store acknowledged that event; the parent kills this process with SIGKILL and checks
every printed event against the reopened database.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from obelisk.domain.events import Event
from obelisk.store import SQLiteEventStore


class CrashTicked(Event):
    """One event of an append: ``index`` of ``count`` events appended together."""

    event_type = "test_sqlite_crash.Ticked"
    task: int
    index: int
    count: int


async def _append_forever(store: SQLiteEventStore, task: int, out: TextIO) -> None:
    stream = f"crash-{task}"
    # After a restart, carry on from where the stream got to before the crash.
    version = await store.stream_version(stream)
    appends = 0
    while True:
        count = 1 + (task + appends) % 3
        events = [CrashTicked(task=task, index=i, count=count) for i in range(count)]
        result = await store.append(stream, events, expected_version=version)
        # One write per append: the lines of an append reach the pipe together.
        out.write(
            "".join(
                f"{stream} {version + i + 1} {result.first_position + i}\n" for i in range(count)
            )
        )
        out.flush()
        version = result.version
        appends += 1


async def _main(path: str, tasks: int, synchronous: str) -> None:
    store = SQLiteEventStore(path, synchronous=synchronous)  # type: ignore[arg-type]
    async with store:
        await asyncio.gather(*(_append_forever(store, t, sys.stdout) for t in range(tasks)))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
