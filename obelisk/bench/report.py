"""Benchmark output: a JSON list for machines, a rich table for people."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from obelisk.bench.runner import WorkloadResult
    from obelisk.bench.workload import Workload

__all__ = ["error_console", "machine_summary", "print_table", "progress", "to_json"]


def error_console() -> Console:
    """The console for progress and errors: stderr, so stdout stays clean for ``--json``."""
    return Console(stderr=True, soft_wrap=True)


def progress(console: Console) -> Callable[[str], None]:
    """A progress callback printing one dim line per run."""

    def say(message: str) -> None:
        console.print(message, style="dim", highlight=False)

    return say


def to_json(results: Sequence[WorkloadResult]) -> str:
    """The results as a JSON list, one object per workload."""
    return json.dumps([result.to_json() for result in results], indent=2)


def machine_summary() -> str:
    """CPU count, Python and platform: the context every figure needs."""
    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}"
    )


def _figure(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    # Small times (a snapshot load, a cache hit) keep three significant digits.
    return f"{value:,.2f}" if value >= 1 else f"{value:.3g}"


_SHORT_UNITS = {"commands/s": "cmd/s", "events/s": "ev/s"}


def _target(result: WorkloadResult) -> str:
    """The target column: ``>=0.8`` (a ratio), ``>=40,000/s`` (a figure), or both."""
    parts: list[str] = []
    if result.target_ratio is not None:
        parts.append(f">={result.target_ratio:.3g}")
    if result.target_value is not None:
        # Compact (40k/s): the column stays narrow enough for an 80-column terminal.
        value = result.target_value
        figure = f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"
        suffix = "/s" if result.unit.endswith("/s") else f" {result.unit}"
        sign = ">=" if result.higher_is_better else "<="
        parts.append(f"{sign}{figure}{suffix}")
    return ",".join(parts) or "-"


def _table_console() -> Console:
    # Piped or captured output has no width of its own and rich would assume 80 columns,
    # truncating figures; a terminal keeps its real width.
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 110))


def print_table(
    results: Sequence[WorkloadResult],
    backend: str,
    console: Console | None = None,
    *,
    skipped: Sequence[Workload] = (),
    backend_name: str = "",
) -> None:
    """Print the results as a table with the targets and whether each is met.

    A legend under the table gives each workload's size (``n``: commands, or events in
    the store) and says what it and its raw baseline do; workloads the backend
    (``backend_name``) cannot run are listed as skipped. ``backend`` describes the engine
    and its durability settings for the footer.
    """
    out = console or _table_console()
    repeats = "/".join(str(r) for r in sorted({result.repeat for result in results}))
    table = Table(title="obelisk bench", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("workload", style="bold", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    table.add_column("obelisk", justify="right", no_wrap=True)
    table.add_column("min..max", justify="right", style="dim", no_wrap=True)
    table.add_column("raw", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", style="bold", no_wrap=True)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("met", justify="center")
    for result in results:
        unit = _SHORT_UNITS.get(result.unit, result.unit)
        table.add_row(
            f"{result.workload} {result.name}",
            unit,
            _figure(result.median),
            f"{_figure(min(result.samples))}..{_figure(max(result.samples))}",
            _figure(result.raw_median),
            f"{result.ratio_to_raw:.2f}",
            _target(result),
            "[green]yes[/]" if result.meets_target else "[red]no[/]",
        )
    out.print(table)
    for result in results:
        line = f"  {result.workload} (n={result.n:,}): {result.title}; raw: {result.baseline}"
        batch = result.extra.get("mean_batch_size")
        if batch is not None:
            line += f"; mean group-commit batch {batch:,.1f} commands"
        out.print(line, highlight=False)
    for workload in skipped:
        reason = workload.skip_reason(backend_name)
        out.print(f"  {workload.id}: skipped, {reason}", highlight=False)
    if any(r.target_value is not None and r.target_ratio is None for r in results):
        out.print(
            "  A target in the unit's terms (cmd/s, ev/s) judges the figure itself; the "
            "ratio to raw is still shown.",
            highlight=False,
        )
    out.print(
        f"\n{backend}\n{machine_summary()}\n"
        f"Medians of {repeats} runs per side, a fresh database per run. ratio = obelisk "
        "speed / raw speed, higher is better for every unit (for ms: raw time / obelisk "
        "time).",
        highlight=False,
    )
