"""Benchmark output: a JSON list for machines, a rich table for people."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from obelisk.bench.runner import WorkloadResult

__all__ = ["error_console", "machine_summary", "print_table", "progress", "to_json"]


def error_console() -> Console:
    """The console for progress and errors: stderr, so stdout stays clean for ``--json``."""
    return Console(stderr=True)


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
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def print_table(
    results: Sequence[WorkloadResult], backend: str, console: Console | None = None
) -> None:
    """Print the results as a table with the targets and whether each is met."""
    out = console or Console()
    repeats = sorted({result.repeat for result in results})
    table = Table(
        title="obelisk bench",
        caption=(
            f"{backend}; {machine_summary()}\n"
            f"medians of {'/'.join(map(str, repeats))} runs per side; "
            "ratio = obelisk speed / raw speed (higher is better, for every unit)"
        ),
    )
    table.add_column("id", style="bold")
    table.add_column("workload")
    table.add_column("n", justify="right")
    table.add_column("unit")
    table.add_column("obelisk", justify="right")
    table.add_column("min..max", justify="right", style="dim")
    table.add_column("raw", justify="right")
    table.add_column("ratio", justify="right", style="bold")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    for result in results:
        met = "[green]met[/]" if result.meets_target else "[red]missed[/]"
        title = result.title
        batch = result.extra.get("mean_batch_size")
        if batch is not None:
            title += f" (mean batch {batch:,.1f})"
        table.add_row(
            result.workload,
            title,
            f"{result.n:,}",
            result.unit + ("" if result.higher_is_better else " (lower is better)"),
            _figure(result.median),
            f"{_figure(min(result.samples))}..{_figure(max(result.samples))}",
            _figure(result.raw_median),
            f"{result.ratio_to_raw:.2f}",
            f">= {result.target_ratio:g}",
            met,
        )
    out.print(table)
