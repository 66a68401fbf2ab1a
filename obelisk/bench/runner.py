"""Run workloads against obelisk and the raw driver, alternately, and summarise.

Every run gets a fresh database, seeded with obelisk's store and closed again before the
timed side opens it, so the obelisk run and the raw run of a repetition start from the same
state. The order of the two sides flips every repetition: whatever drifts over a run (disk
caches, CPU frequency, a neighbour on a shared machine) falls on both.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obelisk.application import Application
from obelisk.bench.backends import Backend, backend_from_option
from obelisk.bench.catalog import WORKLOADS
from obelisk.bench.measure import BenchError, Sample, VerificationFailed
from obelisk.bench.workload import Workload
from obelisk.demo.bank import register_bank_handlers

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "SCALE_ENV",
    "WorkloadResult",
    "parse_workload_ids",
    "run_bench",
    "run_bench_cli",
    "run_obelisk_once",
]

SCALE_ENV = "OBELISK_BENCH_SCALE"
"""Environment variable multiplying every size (tests set it to run in a few seconds)."""

FULL_REPEAT = 5
QUICK_REPEAT = 2
QUICK_SCALE = 0.1


@dataclass(slots=True)
class WorkloadResult:
    """The summary of one workload: obelisk's figures, the raw driver's, their ratio.

    ``ratio_to_raw`` is obelisk's speed over raw's, so higher is better for every unit:
    ``median / raw_median`` for rates, ``raw_median / median`` for times. A result meets
    its target when the ratio reaches ``target_ratio`` and the median reaches
    ``target_value`` (either may be None: no such target).
    """

    workload: str
    name: str
    title: str
    baseline: str
    backend: str
    unit: str
    higher_is_better: bool
    n: int
    repeat: int
    samples: list[float]
    raw_samples: list[float]
    target_ratio: float | None
    extra: dict[str, float] = field(default_factory=dict)
    target_value: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def raw_median(self) -> float:
        return statistics.median(self.raw_samples)

    @property
    def ratio_to_raw(self) -> float:
        if self.higher_is_better:
            return self.median / self.raw_median
        return self.raw_median / self.median

    @property
    def meets_target(self) -> bool:
        if self.target_ratio is not None and self.ratio_to_raw < self.target_ratio:
            return False
        if self.target_value is None:
            return True
        if self.higher_is_better:
            return self.median >= self.target_value
        return self.median <= self.target_value

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (the ``--json`` output's items)."""
        return {
            "workload": self.workload,
            "name": self.name,
            "title": self.title,
            "baseline": self.baseline,
            "backend": self.backend,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "n": self.n,
            "repeat": self.repeat,
            "median": _round(self.median),
            "min": _round(min(self.samples)),
            "max": _round(max(self.samples)),
            "raw_median": _round(self.raw_median),
            "raw_min": _round(min(self.raw_samples)),
            "raw_max": _round(max(self.raw_samples)),
            "ratio_to_raw": round(self.ratio_to_raw, 3),
            "target_ratio": self.target_ratio,
            "target_value": self.target_value,
            "meets_target": self.meets_target,
            "samples": [_round(v) for v in self.samples],
            "raw_samples": [_round(v) for v in self.raw_samples],
            "extra": {key: _round(value) for key, value in self.extra.items()},
        }


def _round(value: float) -> float:
    return round(value, 3)


Progress = Callable[[str], None]


async def _prepare(backend: Backend, workload: Workload, location: str) -> None:
    # Obelisk's own store creates the schema (and the seed rows): both sides get the same
    # tables, indexes and data, and the raw driver never has to know how to migrate.
    async with backend.make_store(location) as store:
        await workload.seed(store)


async def _run_obelisk(backend: Backend, workload: Workload, location: str) -> Sample:
    await _prepare(backend, workload, location)
    # The application and its store are built and opened before the clock starts and
    # closed after it stops: a run measures commands, not start-up.
    options = workload.application_options()
    app = register_bank_handlers(Application(backend.make_store(location), **options))
    async with app:
        before = backend.group_commit_counters(app.store)
        sample = await workload.run_obelisk(app)
        after = backend.group_commit_counters(app.store)
    if workload.reports_group_commit and before is not None and after is not None:
        batches, jobs = after[0] - before[0], after[1] - before[1]
        if batches:
            sample.extra["mean_batch_size"] = jobs / batches
            sample.extra["batches"] = float(batches)
    return sample


async def run_obelisk_once(backend: Backend, workload: Workload) -> Sample:
    """Run ``workload``'s obelisk side once on a fresh database (``obelisk profile``)."""
    location = backend.fresh(f"{workload.id}-profile")
    try:
        return await _run_obelisk(backend, workload, location)
    finally:
        await backend.discard(location)


async def _run_raw(backend: Backend, workload: Workload, location: str) -> Sample:
    reference = workload.reference()
    if reference is not None:
        return await _run_obelisk(backend, reference, location)
    await _prepare(backend, workload, location)
    return await workload.run_raw(backend.raw, location)


async def run_bench(
    backend: Backend,
    workloads: Sequence[Workload],
    repeat: int,
    progress: Progress | None = None,
) -> list[WorkloadResult]:
    """Run each workload ``repeat`` times on each side and summarise it.

    ``backend`` must be started (``async with backend:``). Workloads the backend cannot
    run (``bulk`` off PostgreSQL) are skipped with a progress note.

    Raises:
        VerificationFailed: a run did not do the work it was timed for.
    """
    say = progress or (lambda _message: None)
    results: list[WorkloadResult] = []
    for workload in workloads:
        reason = workload.skip_reason(backend.name)
        if reason is not None:
            say(f"{workload.id} skipped: {reason}")
            continue
        ours: list[Sample] = []
        raws: list[Sample] = []
        # A reference workload computes the raw side's figure its own way (lag's p99 of
        # commands, against its own p99 of lags).
        raw_side = workload.reference() or workload
        for rep in range(1, repeat + 1):
            sides = [("obelisk", _run_obelisk, ours), ("raw", _run_raw, raws)]
            if rep % 2 == 0:
                sides.reverse()
            for side, run, samples in sides:
                location = backend.fresh(f"{workload.id}-{side}-{rep}")
                try:
                    sample = await run(backend, workload, location)
                finally:
                    await backend.discard(location)
                samples.append(sample)
                figure = (workload if side == "obelisk" else raw_side).value(sample)
                say(f"{workload.id} run {rep}/{repeat} {side:>7}: {figure:,.2f} {workload.unit}")
        extra: dict[str, float] = {}
        target = workload.target(backend.name)
        for key in sorted({key for sample in ours for key in sample.extra}):
            extra[key] = statistics.median(s.extra[key] for s in ours if key in s.extra)
        results.append(
            WorkloadResult(
                workload=workload.id,
                name=workload.name,
                title=workload.title,
                baseline=workload.baseline,
                backend=backend.name,
                unit=workload.unit,
                higher_is_better=workload.higher_is_better,
                n=workload.n,
                repeat=repeat,
                samples=[workload.value(s) for s in ours],
                raw_samples=[raw_side.value(s) for s in raws],
                target_ratio=target.ratio,
                target_value=target.value,
                extra=extra,
            )
        )
    return results


def parse_workload_ids(ids: Sequence[str] | None) -> list[str]:
    """The workload ids asked for (all when None), in report order.

    Accepts any case and comma-separated lists (``-w w1,W3``); BenchError on an unknown id.
    """
    if not ids:
        return list(WORKLOADS)
    by_folded = {name.casefold(): name for name in WORKLOADS}
    wanted: set[str] = set()
    for item in ids:
        for part in item.split(","):
            text = part.strip()
            if not text:
                continue
            name = by_folded.get(text.casefold())
            if name is None:
                raise BenchError(f"unknown workload {text!r}; choose from {', '.join(WORKLOADS)}")
            wanted.add(name)
    if not wanted:
        raise BenchError(f"no workload named; choose from {', '.join(WORKLOADS)}")
    return [name for name in WORKLOADS if name in wanted]


def _scale(quick: bool) -> float:
    scale = QUICK_SCALE if quick else 1.0
    text = os.environ.get(SCALE_ENV)
    if text:
        try:
            factor = float(text)
        except ValueError:
            raise BenchError(f"{SCALE_ENV}={text!r} is not a number") from None
        if not factor > 0:
            raise BenchError(f"{SCALE_ENV} must be positive, got {text!r}")
        scale *= factor
    return scale


def run_bench_cli(
    *,
    store: str = "sqlite",
    workloads: Sequence[str] | None = None,
    quick: bool = False,
    repeat: int | None = None,
    json_output: bool = False,
    all_backends: bool = False,
    report_dir: Path | None = None,
) -> int:
    """``obelisk bench``: run, print a table (or JSON) and return the exit code.

    0 when every run did its work, whether or not the targets were met (this is a
    measurement, not a test); 1 when a run failed its verification; 2 for bad options.
    ``all_backends`` runs on SQLite and, when PostgreSQL's server binaries are installed,
    on a throwaway PostgreSQL; ``report_dir`` also writes the Markdown report with charts.
    """
    from obelisk.bench import report

    err = report.error_console()
    try:
        ids = parse_workload_ids(workloads)
        repeats = repeat if repeat is not None else (QUICK_REPEAT if quick else FULL_REPEAT)
        if repeats < 1:
            raise BenchError(f"--repeat must be at least 1, got {repeats}")
        scale = _scale(quick)
        backends = _all_backends(err) if all_backends else [backend_from_option(store)]
    except BenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    everything: list[WorkloadResult] = []
    reports = []
    for backend in backends:
        try:
            chosen = [WORKLOADS[name](scale) for name in ids]
            series = report_dir is not None
            results, description, extra = asyncio.run(
                _run_started(backend, chosen, repeats, err, series=series, scale=scale)
            )
        except VerificationFailed as exc:
            err.print(f"[bold red]verification failed:[/] {exc}", highlight=False)
            return 1
        except BenchError as exc:  # the backend could not start (no server, refused, ...)
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        everything.extend(results)
        if report_dir is not None:
            from obelisk.bench.perf_report import BackendReport

            reports.append(BackendReport(backend.name, description, results, *extra))
        if not json_output:
            skipped = [w for w in chosen if w.skip_reason(backend.name) is not None]
            report.print_table(results, description, skipped=skipped, backend_name=backend.name)
    if json_output:
        sys.stdout.write(report.to_json(everything) + "\n")
    if report_dir is not None:
        from obelisk.bench.perf_report import write_report

        path = write_report(report_dir, reports)
        err.print(f"report written to {path}", highlight=False)
    return 0


def _all_backends(err: Console) -> list[Backend]:
    """SQLite, and a throwaway PostgreSQL when its server binaries are installed."""
    backends = [backend_from_option("sqlite")]
    try:
        from obelisk.servers._host import find_postgres_bin

        find_postgres_bin()
        backends.append(backend_from_option("postgresql://auto"))
    except Exception as exc:  # no binaries, or no asyncpg: SQLite alone, said out loud
        err.print(f"PostgreSQL skipped: {exc}", highlight=False)
    return backends


async def _run_started(
    backend: Backend,
    workloads: Sequence[Workload],
    repeat: int,
    err: Console,
    *,
    series: bool = False,
    scale: float = 1.0,
) -> tuple[list[WorkloadResult], str, tuple[list[Any], list[Any]]]:
    """Start the backend, run (and the report's series), and stop it whatever happens."""
    from obelisk.bench import report

    async with backend:
        description = backend.describe()
        err.print(f"obelisk bench on {description}", highlight=False)
        say = report.progress(err)
        results = await run_bench(backend, workloads, repeat, progress=say)
        extra: tuple[list[Any], list[Any]] = ([], [])
        if series:
            from obelisk.bench.perf_report import measure_concurrency, measure_load_times

            extra = (
                await measure_concurrency(backend, scale, say),
                await measure_load_times(backend, scale, say),
            )
    return results, description, extra
