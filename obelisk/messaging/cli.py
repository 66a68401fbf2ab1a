"""``obelisk relay``, ``obelisk worker`` and ``obelisk dlq``: messaging from a shell."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from obelisk.errors import ObeliskError

__all__ = ["dlq_app", "load_object", "run_relay_cli", "run_worker_cli"]

dlq_app = typer.Typer(name="dlq", help="List and replay dead letters.", no_args_is_help=True)

BrokerUrl = Annotated[str, typer.Option("--broker", help="Broker URL: redis://..., nats://...")]
Group = Annotated[str, typer.Option("--group", help="The consumer group.")]


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def load_object(target: str) -> Any:
    """The object named ``module:attribute`` (the current folder is importable)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not module:attribute")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attr!r}") from None


def _run_until_signalled(main: Callable[[], Any], stop: Callable[[], None]) -> None:
    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        await main()

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        return  # interrupted before the signal handlers were in place: nothing to finish


def run_relay_cli(
    *,
    store: str,
    read: str,
    broker: str,
    name: str,
    topic: str,
    partitions: int,
    page_size: int,
    imports: Sequence[str] = (),
) -> None:
    """``obelisk relay``: publish the log until SIGINT/SIGTERM. ``imports`` names the
    modules defining the event classes (the relay reads the log decoded)."""
    try:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module in imports:
            importlib.import_module(module)
    except ImportError as exc:
        raise _fail(f"cannot import {exc.name or exc}: {exc}") from None
    from obelisk.messaging import broker_from_url
    from obelisk.messaging.relay import OutboxRelay
    from obelisk.projections import read_store_from_url
    from obelisk.store.url import store_from_url

    try:
        events = store_from_url(store)
        read_store = read_store_from_url(read)
        target = broker_from_url(broker)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    holder: list[OutboxRelay] = []

    async def main() -> None:
        async with events, read_store, target:
            relay = OutboxRelay(
                events, read_store, target, name=name, topic=topic, partitions=partitions,
                page_size=page_size,
            )  # fmt: skip
            holder.append(relay)
            await relay.run()

    try:
        _run_until_signalled(main, lambda: holder[0].stop() if holder else None)
    except (ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None


def run_worker_cli(target: str) -> None:
    """``obelisk worker module:consumers``: run the consumers until SIGINT/SIGTERM."""
    from obelisk.messaging.consumers import Consumers

    try:
        consumers = load_object(target)
    except (ImportError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not isinstance(consumers, Consumers):
        raise _fail(f"{target!r} is not an obelisk.messaging.Consumers")
    try:
        _run_until_signalled(consumers.run, consumers.stop)
    except (ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None


@dlq_app.command("list")
def dlq_list(
    broker: BrokerUrl,
    group: Group,
    limit: Annotated[int, typer.Option(help="How many.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this cursor.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The dead letters of a group: id, subject, key, attempts, error."""
    from obelisk.messaging import broker_from_url
    from obelisk.messaging.worker import ATTEMPTS, ERROR

    async def run() -> list[dict[str, Any]]:
        async with broker_from_url(broker) as target:
            letters = await target.read(f"dlq.{group}", after=after, limit=limit)
        return [
            {
                "cursor": entry.cursor,
                "id": entry.message.id,
                "subject": entry.message.subject,
                "key": entry.message.key,
                "attempts": entry.message.headers.get(ATTEMPTS),
                "error": entry.message.headers.get(ERROR),
            }
            for entry in letters
        ]

    try:
        rows = asyncio.run(run())
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
    if json_output:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dead letters of {group}")
    for column in ("cursor", "id", "subject", "key", "attempts", "error"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("cursor", "id", "subject", "key", "attempts",
                                              "error")))  # fmt: skip
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(
    broker: BrokerUrl,
    group: Group,
    limit: Annotated[int, typer.Option(help="How many.")] = 1000,
    after: Annotated[str | None, typer.Option(help="Start after this cursor.")] = None,
) -> None:
    """Publish dead letters back to their topics (the group's workers handle them again)."""
    from obelisk.messaging import broker_from_url
    from obelisk.messaging.worker import replay_dead_letters

    async def run() -> tuple[int, str | None]:
        async with broker_from_url(broker) as target:
            return await replay_dead_letters(target, group, after=after, limit=limit)

    try:
        count, cursor = asyncio.run(run())
    except (ValueError, ObeliskError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"replayed {count} dead letters of {group}; last cursor {cursor}")
