"""The outcome of a demo run, and the ways to show it: a rich table, JSON, a progress bar."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from obelisk.demo.verify import Expected

__all__ = [
    "DemoProgress",
    "DemoReport",
    "RichProgress",
    "percentile",
    "print_report",
    "render_table",
]


def percentile(samples: Sequence[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of ``samples`` (0.0 when there are none).

    Nearest rank returns a latency some command really had, never an interpolation.
    """
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class DemoReport:
    """What a demo run did and whether the store agreed with its plan.

    Attributes:
        store: the store URL the run wrote to.
        temporary: whether that store was a throwaway file, removed after the run.
        clients: concurrent clients.
        accounts: accounts opened.
        deposits: deposits per account.
        commands: commands handled (successful or not).
        failed: commands that raised an obelisk error.
        seconds: wall time of the workload, verification excluded.
        latencies_ms: the latency of every command, in milliseconds.
        events: events the run added to the store (from ``last_position``).
        accounts_verified: accounts whose reloaded balance matched the plan.
        mismatches: one line per disagreement; empty when verified.
        verify_seconds: wall time of the verification.
        expected: the plan the store was checked against.
    """

    store: str
    temporary: bool
    clients: int
    accounts: int
    deposits: int
    commands: int
    failed: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    events: int
    accounts_verified: int
    mismatches: list[str]
    verify_seconds: float
    expected: Expected = field(repr=False)

    @property
    def verified(self) -> bool:
        """Whether every check passed."""
        return not self.mismatches

    @property
    def commands_per_s(self) -> float:
        """Commands handled per second of workload."""
        return self.commands / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (latencies summarised as percentiles)."""
        lat = self.latencies_ms
        return {
            "commands": self.commands,
            "commands_per_s": round(self.commands_per_s, 1),
            "p50_ms": round(percentile(lat, 50), 3),
            "p95_ms": round(percentile(lat, 95), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(max(lat, default=0.0), 3),
            "seconds": round(self.seconds, 3),
            "events": self.events,
            "accounts": self.accounts,
            "accounts_verified": self.accounts_verified,
            "deposits_per_account": self.deposits,
            "clients": self.clients,
            "failed": self.failed,
            "verified": self.verified,
            "verify_seconds": round(self.verify_seconds, 3),
            "store": self.store,
            "temporary_store": self.temporary,
            "mismatches": list(self.mismatches),
        }


def render_table(report: DemoReport) -> Table:
    """The report as a two-column rich table."""
    lat = report.latencies_ms
    table = Table(title="obelisk demo: bank workload", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("clients", f"{report.clients}")
    table.add_row("deposits per account", f"{report.deposits}")
    table.add_row("commands", f"{report.commands:,}")
    table.add_row("commands/s", f"{report.commands_per_s:,.0f}")
    table.add_row("latency p50", f"{percentile(lat, 50):.2f} ms")
    table.add_row("latency p95", f"{percentile(lat, 95):.2f} ms")
    table.add_row("latency p99", f"{percentile(lat, 99):.2f} ms")
    table.add_row("events stored", f"{report.events:,}")
    table.add_row("accounts verified", f"{report.accounts_verified:,} / {report.accounts:,}")
    if report.failed:
        table.add_row("failed commands", f"[red]{report.failed:,}[/red]")
    if report.verified:
        table.add_row("verification", "[green]passed[/green]")
    else:
        table.add_row("verification", f"[red]FAILED ({len(report.mismatches)} mismatches)[/red]")
    return table


def print_report(report: DemoReport, console: Console) -> None:
    """Print the table, the store it ran on and every mismatch to ``console``."""
    console.print(render_table(report))
    store = f"{report.store} (temporary, now removed)" if report.temporary else report.store
    console.print(Text(f"store: {store}"), soft_wrap=True)
    for line in report.mismatches:
        console.print(Text(f"mismatch: {line}", style="red"), soft_wrap=True)


class DemoProgress(Protocol):
    """Where a run reports its progress: one phase at a time, one command at a time."""

    def phase(self, description: str, total: int) -> None:
        """A new phase of ``total`` commands starts."""

    def advance(self) -> None:
        """One more command of the current phase finished."""


class RichProgress:
    """A rich progress bar on stderr; a no-op when ``enabled`` is false or stderr is no TTY."""

    def __init__(self, *, enabled: bool = True) -> None:
        console = Console(stderr=True, soft_wrap=True)
        # A bar redrawn into a file or pipe is noise: only draw it for a person watching.
        self._progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self._task: TaskID | None = None

    def phase(self, description: str, total: int) -> None:
        self._task = self._progress.add_task(description, total=total)

    def advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
