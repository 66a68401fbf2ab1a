"""``obelisk profile TARGET``: where the time goes, with a sampling profiler (pyinstrument).

TARGET is a bench workload id (``W6``, ``W3-snapshot``, ...: its obelisk side runs once on
a fresh database of the chosen backend) or ``module:callable`` (called with no arguments;
an awaitable result is run on an event loop). The profile is written as an HTML report,
and the functions with the most time of their own are printed. A target that raises still
gets its report — the profile shows where it was when it failed — and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["HotSpot", "hot_spots", "run_profile_cli"]


class HotSpot(msgspec.Struct, frozen=True):
    """A function and the time spent in it, not in what it called."""

    function: str
    location: str
    self_seconds: float
    share: float


def hot_spots(root: Any, top: int) -> list[HotSpot]:
    """The ``top`` functions of a pyinstrument frame tree by self time."""
    totals: dict[tuple[str, str], float] = {}
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:
            continue
        key = (frame.function or "?", f"{frame.file_path_short}:{frame.line_no}")
        totals[key] = totals.get(key, 0.0) + frame.total_self_time
    whole = max(root.time, 1e-12)
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]
    return [HotSpot(fn, where, seconds, seconds / whole) for (fn, where), seconds in ranked]


def _resolve(target: str, store: str, quick: bool) -> Callable[[], Any]:
    """What to run for ``target``: a workload's obelisk side, or a user's callable."""
    from obelisk.bench.catalog import WORKLOADS

    by_folded = {name.casefold(): name for name in WORKLOADS}
    if target.casefold() in by_folded:
        workload = WORKLOADS[by_folded[target.casefold()]](0.1 if quick else 1.0)
        return lambda: _run_workload(workload, store)
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"{target!r} is neither a workload id ({', '.join(WORKLOADS)}) nor module:callable"
        )
    module = importlib.import_module(module_name)
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {attribute!r}")
    return fn  # type: ignore[no-any-return]


async def _run_workload(workload: Any, store: str) -> None:
    from obelisk.bench.backends import backend_from_option
    from obelisk.bench.runner import run_obelisk_once

    backend = backend_from_option(store)
    async with backend:
        await run_obelisk_once(backend, workload)


def run_profile_cli(
    target: str, *, store: str, output: Path, top: int, quick: bool, interval: float
) -> int:
    """Profile ``target``; 0 when it ran, 1 when it raised, 2 for a bad target."""
    from pyinstrument import Profiler
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    try:
        run = _resolve(target, store, quick)
    except (ValueError, ImportError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    profiler = Profiler(interval=interval, async_mode="enabled")
    failure: BaseException | None = None
    profiler.start()
    try:
        result = run()
        if inspect.isawaitable(result):
            asyncio.run(_awaited(result))
    except Exception as exc:  # the report shows where it failed
        failure = exc
    finally:
        session = profiler.stop()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(profiler.output_html())
    console = Console()
    console.print(f"profile of {target}: {session.duration:.2f} s, report: {output}")
    root = session.root_frame()
    if root is not None:
        for spot in hot_spots(root, top):
            console.print(
                f"  {spot.share:6.1%}  {spot.self_seconds * 1000:9.1f} ms  "
                f"{spot.function}  {spot.location}",
                highlight=False,
            )
    if failure is not None:
        err.print(f"[bold red]{target} raised:[/] {failure!r}", highlight=False)
        err.print("".join(traceback.format_exception(failure)), highlight=False)
        return 1
    return 0


async def _awaited(awaitable: Any) -> Any:
    return await awaitable

