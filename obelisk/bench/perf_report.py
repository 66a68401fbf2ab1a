"""``obelisk bench --all --report DIR``: every workload on every backend, as Markdown + charts.

The report holds, per backend: the results table (obelisk beside its raw baseline), and
PNG charts drawn with matplotlib — ratio to raw per workload, throughput against the number
of concurrent clients (W6's commands at 1 to 64 clients), and load time against events per
aggregate with and without a snapshot, and projection throughput (``W4b``,
``W4b-partitioned``, ``rebuild``: obelisk beside its baseline; ``lag`` is in the table).
Every figure comes from this run on this machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.bench.backends import Backend
from obelisk.bench.loading_workloads import SnapshotBehindReplay
from obelisk.bench.report import machine_summary
from obelisk.bench.runner import WorkloadResult, run_obelisk_once
from obelisk.bench.workload import Workload
from obelisk.bench.workloads import Concurrent, Replay

__all__ = [
    "BackendReport",
    "CLIENT_COUNTS",
    "LOAD_SIZES",
    "measure_concurrency",
    "measure_load_times",
    "write_report",
]

CLIENT_COUNTS = (1, 4, 16, 64)
LOAD_SIZES = (100, 1_000, 10_000)


@dataclass
class BackendReport:
    """What one backend measured."""

    name: str
    description: str
    results: list[WorkloadResult]
    concurrency: list[tuple[int, float]] = field(default_factory=list)  # clients, cmd/s
    load_times: list[tuple[int, float, float]] = field(default_factory=list)  # events, ms, ms


async def measure_concurrency(
    backend: Backend, scale: float, say: Callable[[str], None]
) -> list[tuple[int, float]]:
    """W6's commands/s with 1, 4, 16 and 64 client tasks (obelisk only)."""
    points = []
    for clients in CLIENT_COUNTS:
        cls = type(f"ConcurrentAt{clients}", (Concurrent,), {"clients": clients})
        workload: Workload = cls(scale)
        sample = await run_obelisk_once(backend, workload)
        points.append((clients, workload.value(sample)))
        say(f"concurrency {clients:>2} clients: {points[-1][1]:,.0f} commands/s")
    return points


async def measure_load_times(
    backend: Backend, scale: float, say: Callable[[str], None]
) -> list[tuple[int, float, float]]:
    """ms per load of one aggregate of N events: replayed whole, and from a snapshot 100
    events behind (obelisk only)."""
    points = []
    sizes = sorted({max(round(size * scale), 20) for size in LOAD_SIZES})
    for events in sizes:
        replay, snapshot = Replay(scale), SnapshotBehindReplay(scale)
        replay.events = snapshot.events = events
        plain = replay.value(await run_obelisk_once(backend, replay))
        snapped = snapshot.value(await run_obelisk_once(backend, snapshot))
        points.append((events, plain, snapped))
        say(f"load of {events:,} events: {plain:.3f} ms replayed, {snapped:.3f} ms via snapshot")
    return points


def write_report(directory: Path, reports: Sequence[BackendReport]) -> Path:
    """Write ``report.md`` and its charts into ``directory``; return the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "# obelisk performance report",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine_summary()}.",
        "Every figure is a median of this run; ratio = obelisk speed / raw driver speed "
        "(higher is better for every unit).",
        "",
    ]
    for report in reports:
        lines += [f"## {report.name}", "", report.description, ""]
        lines += _results_table(report.results)
        for title, filename, draw in (
            ("Ratio to raw per workload", f"{report.name}-ratios.png", _draw_ratios),
            ("Throughput against concurrent clients", f"{report.name}-concurrency.png",
             _draw_concurrency),
            ("Load time against events per aggregate", f"{report.name}-loads.png",
             _draw_loads),
            ("Projection throughput", f"{report.name}-projections.png", _draw_projections),
        ):  # fmt: skip
            if draw(report, directory / filename):
                lines += [f"### {title}", "", f"![{title}]({filename})", ""]
        lines += _series_tables(report)
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path


def _results_table(results: Sequence[WorkloadResult]) -> list[str]:
    rows = [
        "| workload | unit | obelisk | baseline | ratio | target met |",
        "|---|---|---:|---:|---:|:-:|",
    ]
    for r in results:
        rows.append(
            f"| {r.workload} | {r.unit} | {r.median:,.4g} | {r.raw_median:,.4g} | "
            f"{r.ratio_to_raw:.2f} | {'yes' if r.meets_target else 'no'} |"
        )
    return [*rows, ""]


def _series_tables(report: BackendReport) -> list[str]:
    lines: list[str] = []
    if report.concurrency:
        lines += ["| clients | commands/s |", "|---:|---:|"]
        lines += [f"| {c} | {v:,.0f} |" for c, v in report.concurrency]
        lines.append("")
    if report.load_times:
        lines += ["| events | ms replayed | ms via snapshot (100 behind) |", "|---:|---:|---:|"]
        lines += [f"| {n:,} | {a:.3f} | {b:.3f} |" for n, a, b in report.load_times]
        lines.append("")
    return lines


def _figure() -> tuple[Any, Any]:
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7, 4), dpi=100)


def _save(figure: Any, path: Path) -> bool:
    from matplotlib import pyplot

    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def _plain_numbers(axes: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _position: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.yaxis.set_major_formatter(plain)


def _draw_ratios(report: BackendReport, path: Path) -> bool:
    if not report.results:
        return False
    figure, axes = _figure()
    names = [r.workload for r in report.results]
    ratios = [r.ratio_to_raw for r in report.results]
    colours = ["tab:green" if r.meets_target else "tab:red" for r in report.results]
    axes.barh(names, ratios, color=colours)
    axes.axvline(1.0, color="grey", linewidth=1)
    axes.invert_yaxis()
    axes.set_xlabel("obelisk / raw (higher is better; green: target met)")
    axes.set_title(f"{report.name}: ratio to the raw driver")
    return _save(figure, path)


def _draw_concurrency(report: BackendReport, path: Path) -> bool:
    if not report.concurrency:
        return False
    figure, axes = _figure()
    clients = [c for c, _ in report.concurrency]
    axes.plot(clients, [v for _, v in report.concurrency], marker="o")
    axes.set_xscale("log", base=2)
    axes.set_xticks(clients, [str(c) for c in clients])
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("commands/s")
    axes.set_title(f"{report.name}: W6 commands/s against clients")
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


def _draw_loads(report: BackendReport, path: Path) -> bool:
    if not report.load_times:
        return False
    figure, axes = _figure()
    sizes = [n for n, _, _ in report.load_times]
    axes.plot(sizes, [a for _, a, _ in report.load_times], marker="o", label="replayed")
    axes.plot(sizes, [b for _, _, b in report.load_times], marker="o", label="via snapshot")
    axes.set_xscale("log")
    axes.set_yscale("log")
    _plain_numbers(axes)
    axes.set_xlabel("events in the aggregate")
    axes.set_ylabel("ms per load")
    axes.set_title(f"{report.name}: load time against aggregate size")
    axes.legend()
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


PROJECTION_WORKLOADS = ("W4b", "W4b-partitioned", "rebuild")


def _draw_projections(report: BackendReport, path: Path) -> bool:
    results = [r for r in report.results if r.workload in PROJECTION_WORKLOADS]
    if not results:
        return False
    figure, axes = _figure()
    rows = range(len(results))
    height = 0.38
    axes.barh([y - height / 2 for y in rows], [r.median for r in results], height,
              label="obelisk", color="tab:blue")  # fmt: skip
    axes.barh([y + height / 2 for y in rows], [r.raw_median for r in results], height,
              label="baseline", color="tab:grey")  # fmt: skip
    axes.set_yticks(list(rows), [r.workload for r in results])
    axes.invert_yaxis()
    axes.set_xlabel("events/s (W4b-partitioned's baseline: one worker)")
    axes.set_title(f"{report.name}: projection throughput")
    axes.legend()
    axes.grid(True, axis="x", alpha=0.3)
    return _save(figure, path)
