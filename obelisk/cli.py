"""The ``obelisk`` command: demo, serve, demo-bank, bench, inspect, profile, metrics,
projections, relay, worker, dlq."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

# A background job of a non-interactive shell starts with SIGINT ignored, and Python keeps
# it ignored: `kill -INT` of a worker started with `&` would be lost until its event loop
# installs its own handler, or forever if it came earlier. From here on (before typer is
# imported), SIGINT interrupts as in a terminal. A signal during the interpreter's start and
# the ~80 ms import of the obelisk package is still lost: issue 19 closes that window.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="obelisk",
    help="Performance-critical domain-driven design for asyncio.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def demo(
    clients: Annotated[
        int, typer.Option(help="Concurrent buyers (one HTTP connection each).")
    ] = 64,
    sections: Annotated[int, typer.Option(help="Sections on sale.")] = 8,
    seats: Annotated[int, typer.Option(help="Seats per section.")] = 250,
    hold: Annotated[
        float, typer.Option(help="Seconds an unpaid reservation holds its seats.")
    ] = 2.0,
    duration: Annotated[
        float, typer.Option(help="Longest the sale runs (seconds) before buyers stop.")
    ] = 60.0,
    store: Annotated[
        str | None,
        typer.Option(help="Event store URL; default: a SQLite file in a temporary folder."),
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Broker URL (redis://, nats://); default: in memory.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """A flash sale over real HTTP: many buyers, a fixed stock, every seat accounted for."""
    from obelisk.demo.sale import run_sale_cli

    raise typer.Exit(
        run_sale_cli(
            clients=clients,
            sections=sections,
            seats=seats,
            hold=hold,
            duration=duration,
            store=store,
            broker=broker,
            json_output=json_output,
        )
    )


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="The ASGI application, module:attribute.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Processes sharing the port.")
    ] = 1,
    store: Annotated[str | None, typer.Option(help="Event store URL (OBELISK_STORE).")] = None,
    read_store: Annotated[
        str | None, typer.Option(help="Read store URL (OBELISK_READ_STORE).")
    ] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL (OBELISK_BROKER).")] = None,
    redis: Annotated[
        str | None, typer.Option(help="Redis URL for cache invalidations (OBELISK_REDIS).")
    ] = None,
    app_dir: Annotated[str, typer.Option(help="Folder to import the target from.")] = ".",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
) -> None:
    """Run an application (e.g. examples.flashsale:app) under uvicorn, in one or more
    processes."""
    from obelisk.serve import ServeOptions, check_options
    from obelisk.serve import serve as run

    options = ServeOptions(target, host=host, port=port, workers=workers, store=store,
                           read_store=read_store, broker=broker, redis=redis,
                           app_dir=app_dir, log_level=log_level)  # fmt: skip
    problems = check_options(options)
    if problems:
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    run(options)


@app.command("demo-bank")
def demo_bank(
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 64,
    accounts: Annotated[int, typer.Option(help="Accounts opened (one per command).")] = 2000,
    deposits: Annotated[int, typer.Option(help="Deposits per account.")] = 10,
    store: Annotated[
        str | None, typer.Option(help="Store URL; default: a SQLite file in a temporary folder.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The bank workload (no HTTP): concurrent clients, every balance verified."""
    from obelisk.demo.run import run_demo_cli

    raise typer.Exit(
        run_demo_cli(
            clients=clients,
            accounts=accounts,
            deposits=deposits,
            store_url=store,
            json_output=json_output,
        )
    )


@app.command()
def bench(
    store: Annotated[
        str,
        typer.Option(
            help="Backend: sqlite, a sqlite:///folder URL, a postgresql://user@host:port/db "
            "server (a fresh schema per run), or postgresql://auto (a throwaway server)."
        ),
    ] = "sqlite",
    workload: Annotated[
        list[str] | None, typer.Option("--workload", "-w", help="Run only these ids (repeatable).")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Small sizes and few repetitions: a smoke run.")
    ] = False,
    repeat: Annotated[int | None, typer.Option(help="Repetitions per workload.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    all_backends: Annotated[
        bool,
        typer.Option("--all", help="Every backend available: SQLite, and PostgreSQL if installed."),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write a Markdown report with PNG charts into this folder."),
    ] = None,
) -> None:
    """Run the benchmark workloads, each beside the raw driver doing the same work."""
    from obelisk.bench.runner import run_bench_cli

    raise typer.Exit(
        run_bench_cli(
            store=store,
            workloads=workload or None,
            quick=quick,
            repeat=repeat,
            json_output=json_output,
            all_backends=all_backends,
            report_dir=report,
        )
    )


@app.command()
def inspect(
    store: Annotated[str, typer.Argument(help="Store URL: sqlite:///app.db, postgresql://...")],
    limit: Annotated[int, typer.Option(help="How many of the largest streams.")] = 20,
    slowest: Annotated[int, typer.Option(help="How many of them to list by load time.")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="A module defining your event classes (repeatable)."),
    ] = None,
    undecodable: Annotated[
        bool,
        typer.Option(
            "--undecodable",
            help="List the events that cannot be decoded (up to --limit); exit 1 if any.",
        ),
    ] = False,
) -> None:
    """List the largest streams (events, bytes, snapshot) and the slowest to load."""
    from obelisk.inspection import run_inspect_cli

    raise typer.Exit(
        run_inspect_cli(
            store,
            limit=limit,
            slowest=slowest,
            json_output=json_output,
            imports=imports or (),
            undecodable=undecodable,
        )
    )


@app.command()
def profile(
    target: Annotated[
        str, typer.Argument(help="A bench workload id (W6, W3-snapshot, ...) or module:callable.")
    ],
    store: Annotated[str, typer.Option(help="Backend for a workload (as obelisk bench).")] = (
        "sqlite"
    ),
    output: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        "obelisk-profile.html"
    ),
    top: Annotated[int, typer.Option(help="How many hot spots to print.")] = 15,
    quick: Annotated[bool, typer.Option(help="A workload at a tenth of its size.")] = False,
    interval: Annotated[float, typer.Option(help="Sampling interval, seconds.")] = 0.001,
) -> None:
    """Run a workload or your code under a sampling profiler; HTML report + hot spots."""
    from obelisk.profiling import run_profile_cli

    raise typer.Exit(
        run_profile_cli(target, store=store, output=output, top=top, quick=quick, interval=interval)
    )


@app.command()
def metrics(
    store: Annotated[str, typer.Argument(help="Store URL: sqlite:///app.db, postgresql://...")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9464,
    once: Annotated[bool, typer.Option(help="Print the metrics once and exit.")] = False,
) -> None:
    """Serve a store's metrics (up, last position, scrape time) for Prometheus."""
    from obelisk.observability.serve import run_metrics_cli

    raise typer.Exit(run_metrics_cli(store, host=host, port=port, once=once))


@app.command()
def relay(
    store: Annotated[str, typer.Option(help="Event store URL.")],
    read: Annotated[str, typer.Option(help="Read store URL (the relay's checkpoint).")],
    broker: Annotated[str, typer.Option(help="Broker URL: redis://..., nats://...")],
    name: Annotated[str, typer.Option(help="The relay's name (its checkpoint).")] = "relay",
    topic: Annotated[str, typer.Option(help="The topic to publish to.")] = "events",
    partitions: Annotated[int, typer.Option(help="Spread streams over N topics.")] = 1,
    page_size: Annotated[int, typer.Option(help="Events per published batch.")] = 1000,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="A module defining your event classes (repeatable)."),
    ] = None,
) -> None:
    """Publish the event log to a broker from the relay's checkpoint, until SIGINT/SIGTERM."""
    from obelisk.messaging.cli import run_relay_cli

    run_relay_cli(
        store=store, read=read, broker=broker, name=name, topic=topic,
        partitions=partitions, page_size=page_size, imports=imports or (),
    )  # fmt: skip


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="Your Consumers object, module:name.")],
) -> None:
    """Run a service's message handlers (an obelisk.messaging.Consumers) until stopped."""
    from obelisk.messaging.cli import run_worker_cli

    run_worker_cli(target)


def _add_groups() -> None:
    from obelisk.messaging.cli import dlq_app
    from obelisk.projections.cli import projections_app

    app.add_typer(projections_app, name="projections")
    app.add_typer(dlq_app, name="dlq")


_add_groups()


def main() -> None:
    """Console-script entry point."""
    app()
