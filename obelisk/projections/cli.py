"""``obelisk projections``: status, rebuild, pause, resume and run, from a shell.

Projections are named as ``module:ClassName`` where the command needs their code (rebuild,
run), and by their stored name where it does not (status, pause, resume).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import time
from typing import Annotated

import msgspec
import typer

from obelisk.errors import ObeliskError
from obelisk.projections.projection import Projection
from obelisk.projections.readstore import ReadStore

__all__ = ["load_projection", "projections_app"]

projections_app = typer.Typer(
    name="projections",
    help="Inspect and operate projections (read models).",
    no_args_is_help=True,
)

ReadUrl = Annotated[
    str, typer.Option("--read", help="Read store URL: sqlite:///read.db, postgresql://...")
]
StoreUrl = Annotated[str, typer.Option("--store", help="Event store URL.")]


class ProjectionStatus(msgspec.Struct, frozen=True):
    """One projection as ``obelisk projections status`` shows it."""

    name: str
    version: int
    live_generation: int
    building_generation: int | None
    partitions: int
    paused: bool
    position: int | None
    positions_behind: int | None
    seconds_since_last_event: float | None
    owners: list[str | None]
    dead_letters: int


def load_projection(target: str) -> Projection:
    """An instance of the Projection class named ``module:ClassName``."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not module:ClassName")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the current folder's modules
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attr!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Projection)):
        raise ValueError(f"{target!r} is not a Projection class")
    return cls()


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _read_store(url: str) -> ReadStore:
    from obelisk.projections import read_store_from_url

    return read_store_from_url(url)


async def collect_status(
    read_store: ReadStore, head: int | None, name: str | None = None
) -> list[ProjectionStatus]:
    """The status of every projection (or ``name``) in an open read store."""
    out = []
    for state in await read_store.states():
        if name is not None and state.name != name:
            continue
        rows = [
            r for r in await read_store.checkpoints(state.name)
            if r.generation == state.live_generation
        ]  # fmt: skip
        position = min((r.position for r in rows), default=None)
        last = max((r.last_event_at or 0.0 for r in rows), default=0.0)
        letters = await read_store.dead_letters(state.name, limit=1_000_000)
        out.append(
            ProjectionStatus(
                state.name,
                state.version,
                state.live_generation,
                state.building_generation,
                state.partitions,
                state.paused,
                position,
                None if head is None or position is None else max(0, head - position),
                round(time.time() - last, 3) if last else None,
                [r.owner if (r.lease_seconds_left or 0) > 0 else None for r in rows],
                len(letters),
            )
        )
    return out


@projections_app.command()
def status(
    read: ReadUrl,
    store: Annotated[
        str | None, typer.Option("--store", help="Event store URL, to show positions behind.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only this projection.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Every projection: version, generations, checkpoint, owners, lag, dead letters."""

    async def run() -> list[ProjectionStatus]:
        head = None
        if store is not None:
            from obelisk.store.url import store_from_url

            async with store_from_url(store) as events:
                head = await events.last_position()
        async with _read_store(read) as read_store:
            return await collect_status(read_store, head, name)

    try:
        statuses = asyncio.run(run())
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
    if name is not None and not statuses:
        raise _fail(f"no projection {name!r} in {read}")
    if json_output:
        sys.stdout.write(json.dumps(msgspec.to_builtins(statuses), indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="projections")
    for column in ("name", "version", "generation", "partitions", "state", "position",
                   "behind", "last event", "owners", "dead letters"):  # fmt: skip
        table.add_column(column)
    for s in statuses:
        generation = str(s.live_generation)
        if s.building_generation is not None:
            generation += f" (building {s.building_generation})"
        table.add_row(
            s.name,
            str(s.version),
            generation,
            str(s.partitions),
            "paused" if s.paused else "running",
            str(s.position),
            "-" if s.positions_behind is None else str(s.positions_behind),
            "-" if s.seconds_since_last_event is None else f"{s.seconds_since_last_event:.1f}s ago",
            ", ".join(o or "-" for o in s.owners),
            str(s.dead_letters),
        )
    Console().print(table)


def _set_paused(read: str, name: str, paused: bool) -> None:
    async def run() -> None:
        async with _read_store(read) as read_store:
            await read_store.set_paused(name, paused)

    try:
        asyncio.run(run())
    except LookupError as exc:
        raise _fail(str(exc.args[0])) from None
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{name}: {'paused' if paused else 'resumed'}")


@projections_app.command()
def pause(
    name: Annotated[str, typer.Argument(help="The projection's name.")], read: ReadUrl
) -> None:
    """Pause a projection: its runners stop applying at their next batch."""
    _set_paused(read, name, True)


@projections_app.command()
def resume(
    name: Annotated[str, typer.Argument(help="The projection's name.")], read: ReadUrl
) -> None:
    """Resume a paused projection."""
    _set_paused(read, name, False)


@projections_app.command()
def rebuild(
    target: Annotated[str, typer.Argument(help="The Projection class, module:ClassName.")],
    store: StoreUrl,
    read: ReadUrl,
    page_size: Annotated[int, typer.Option(help="Events per batch.")] = 5000,
) -> None:
    """Rebuild beside the live tables, then switch (blue/green); shows progress and ETA."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from obelisk.projections.rebuild import RebuildProgress
    from obelisk.projections.rebuild import rebuild as rebuild_projection
    from obelisk.store.url import store_from_url

    try:
        projection = load_projection(target)
    except (ImportError, ValueError) as exc:
        raise _fail(str(exc)) from None

    async def run() -> int:
        async with store_from_url(store) as events, _read_store(read) as read_store:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[events]} events"),
                TimeRemainingColumn(),
                transient=False,
            ) as bar:
                task = bar.add_task(f"rebuild {type(projection).name}", total=1, events=0)

                def report(p: RebuildProgress) -> None:
                    # Positions stand in for work done: on PostgreSQL they are not event
                    # counts, but they grow with the log, which is all an ETA needs.
                    bar.update(
                        task,
                        total=max(1, p.head),
                        completed=min(p.position, p.head),
                        events=p.events,
                    )

                generation = await rebuild_projection(
                    projection, events, read_store, page_size=page_size, progress=report
                )
                bar.update(task, completed=bar.tasks[0].total)
            return generation

    try:
        generation = asyncio.run(run())
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{type(projection).name}: generation {generation} is live")


@projections_app.command("run")
def run_worker(
    target: Annotated[str, typer.Argument(help="The Projection class, module:ClassName.")],
    store: StoreUrl,
    read: ReadUrl,
    partitions: Annotated[int, typer.Option(help="Partitions of the projection.")] = 1,
    page_size: Annotated[int, typer.Option(help="Events per batch.")] = 1000,
    dead_letter: Annotated[
        bool, typer.Option(help="Dead-letter failing events instead of stopping.")
    ] = False,
    lease_seconds: Annotated[float, typer.Option(help="Lease length, seconds.")] = 10.0,
) -> None:
    """Run a projection worker until SIGINT/SIGTERM (start several for partitions)."""
    from obelisk.projections.worker import ProjectionWorker
    from obelisk.store.url import store_from_url

    try:
        projection = load_projection(target)
    except (ImportError, ValueError) as exc:
        raise _fail(str(exc)) from None

    async def run() -> None:
        async with store_from_url(store) as events, _read_store(read) as read_store:
            worker = ProjectionWorker(
                projection,
                events,
                read_store,
                partitions=partitions,
                page_size=page_size,
                on_error="dead-letter" if dead_letter else "stop",
                lease_seconds=lease_seconds,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, worker.stop)
            await worker.run()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return  # interrupted before the signal handlers were in place: nothing to finish
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
