"""Helper processes for projection workloads: one job each, timed from the parent.

Two workloads need work done in other processes: partitioned workers (one OS process per
worker, each with its own event loop and connections, as they are deployed) and rebuilds
whose peak memory is measured (a fresh process, so ``ru_maxrss`` is the rebuild's and
nothing else's). Both use this small protocol over pipes:

1. the parent starts ``python -m obelisk.bench.child JOB`` (JOB is JSON);
2. the child opens its stores and prints ``ready``: interpreter start-up, imports and
   connecting stay outside the clock;
3. once every child is ready, the parent starts its clock and writes ``go`` to each;
4. each child does its job and prints one JSON line with what it did; the clock stops
   when the last line arrives.

Jobs: ``partition`` (one ``ProjectionRunner`` of a partitioned projection, run until it
has caught up) and ``rebuild`` (``obelisk.projections.rebuild``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import obelisk
from obelisk.bench.measure import BenchError, stopwatch

__all__ = ["main", "run_children"]

# The package's own folder goes first on the child's path: it imports this very code even
# when obelisk runs from a checkout that is not installed.
_ROOT = str(Path(obelisk.__file__).resolve().parent.parent)
_READY = b"ready\n"
_GO = b"go\n"


class _Child:
    """One helper process seen from the parent."""

    def __init__(self, job: Mapping[str, Any], process: asyncio.subprocess.Process) -> None:
        self.job = job
        self.process = process
        assert process.stderr is not None
        # Read all along: a child that logs a lot must never block on a full pipe.
        self._stderr = asyncio.ensure_future(process.stderr.read())

    @classmethod
    async def start(cls, job: Mapping[str, Any]) -> _Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "obelisk.bench.child", json.dumps(job),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return cls(job, process)

    async def _line(self) -> bytes:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            await self.process.wait()
            errors = (await self._stderr).decode(errors="replace").strip()
            raise BenchError(
                f"bench helper {self.job.get('job')!r} exited with {self.process.returncode}:"
                f"\n{errors[-3000:]}"
            )
        return line

    async def ready(self) -> None:
        line = await self._line()
        if line != _READY:
            raise BenchError(f"bench helper said {line!r} instead of ready")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(_GO)

    async def result(self) -> dict[str, Any]:
        result = json.loads(await self._line())
        assert isinstance(result, dict)
        return result

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._stderr.cancel()


async def run_children(jobs: Sequence[Mapping[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Run one helper process per job; seconds from ``go`` to the last result, and the
    results in job order. BenchError (with the child's stderr) if one fails."""
    children: list[_Child] = []
    try:
        for job in jobs:  # start-up then runs in parallel, until each says ready
            children.append(await _Child.start(job))
        await asyncio.gather(*(child.ready() for child in children))
        with stopwatch() as watch:
            for child in children:
                child.go()
            results = await asyncio.gather(*(child.result() for child in children))
    finally:
        for child in children:
            if child.process.returncode is None and child.process.stdin is not None:
                child.process.stdin.close()
        await asyncio.gather(*(child.close() for child in children), return_exceptions=True)
    return watch.seconds, list(results)


# -- the child's side ------------------------------------------------------------------


def _memory() -> dict[str, float]:
    """This process's peak RSS (KiB) and the file-backed part of its RSS now.

    On Linux the peak is ``VmHWM``, the high-water mark of this process's own memory:
    ``ru_maxrss`` would not do there, because the kernel carries the parent's RSS at the
    fork into the child's ``ru_maxrss`` across ``exec`` (a parent that seeded a million
    events made every child report the parent's size). Elsewhere ``ru_maxrss`` is all
    there is. Both count every resident page, memory-mapped file pages included: the
    SQLite store maps its file for reads, so the file-backed part (``RssFile``) is
    reported beside the peak.
    """
    memory: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    memory["peak_rss_kib"] = float(line.split()[1])
                elif line.startswith("RssFile:"):
                    memory["file_rss_kib"] = float(line.split()[1])
    except OSError:  # not Linux
        pass
    if "peak_rss_kib" not in memory:
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        memory["peak_rss_kib"] = peak / 1024 if sys.platform == "darwin" else peak
    return memory


def _cpu_seconds() -> float:
    """CPU time this process has used (user + system): where a worker's time goes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _partition(job: Mapping[str, Any]) -> None:
    from obelisk.bench.projection_models import PROJECTIONS
    from obelisk.projections import ProjectionRunner, read_store_from_url
    from obelisk.store.url import store_from_url

    projection = PROJECTIONS[job["projection"]]()
    async with (
        store_from_url(job["event_store"]) as store,
        read_store_from_url(job["read_store"]) as read_store,
    ):
        runner = ProjectionRunner(
            projection,
            store,
            read_store,
            partition=job["partition"],
            partitions=job["partitions"],
            page_size=job["page_size"],
        )
        await _wait_for_go()
        cpu = _cpu_seconds()
        await runner.run_until_caught_up()
        _report(
            {
                "events": runner.events_applied,
                "position": runner.position,
                "batches": runner.batches,
                "cpu_seconds": _cpu_seconds() - cpu,
            }
        )


async def _rebuild(job: Mapping[str, Any]) -> None:
    from obelisk.bench.projection_models import PROJECTIONS
    from obelisk.projections import RebuildProgress, read_store_from_url, rebuild
    from obelisk.store.url import store_from_url

    projection = PROJECTIONS[job["projection"]]()
    events = 0

    def progress(done: RebuildProgress) -> None:
        nonlocal events
        events = done.events

    async with (
        store_from_url(job["event_store"]) as store,
        read_store_from_url(job["read_store"]) as read_store,
    ):
        await _wait_for_go()
        generation = await rebuild(
            projection, store, read_store, page_size=job["page_size"], progress=progress
        )
        # Measured before the stores close: their mapped pages are still resident.
        _report({"events": events, "generation": generation, **_memory()})


def _report(result: Mapping[str, Any]) -> None:
    # Before the stores close: closing a pool is not the job, and the parent's clock
    # stops at this line.
    sys.stdout.buffer.write(json.dumps(result).encode() + b"\n")
    sys.stdout.buffer.flush()


async def _wait_for_go() -> None:
    gc.collect()  # as the parent's stopwatch does before its clock starts
    sys.stdout.buffer.write(_READY)
    sys.stdout.buffer.flush()
    line = await asyncio.to_thread(sys.stdin.buffer.readline)
    if line != _GO:
        raise SystemExit(f"expected go, got {line!r}")


_JOBS = {"partition": _partition, "rebuild": _rebuild}


def main(argv: Sequence[str]) -> int:
    """Run the job in ``argv[1]`` (JSON); it prints its result as one JSON line."""
    job = json.loads(argv[1])
    asyncio.run(_JOBS[job["job"]](job))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
