"""The projection the projection tests run, and a worker process for the fault tests.

Imported by the tests for :class:`Ledger` and its events; run as a script it is one
worker process, killed with SIGKILL by ``test_projection_faults.py``::

    python _projection_worker.py --kind sqlite --events E.db --read R.db --mode runner ...

It prints, flushed at once, ``a POSITION`` when a handler has applied an event (not yet
committed) and, in ``runner`` mode, ``c POSITION`` after each batch committed. The parent
reads them to kill the process while a batch is in flight, and to see that it did.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TextIO

from obelisk.domain.events import Event
from obelisk.projections import (
    Context,
    Index,
    Projection,
    ProjectionRunner,
    ProjectionWorker,
    ReadStore,
    Table,
    handles,
)
from obelisk.store.base import EventStore


class LedgerOpened(Event):
    event_type = "test_projections.LedgerOpened"
    owner: str


class LedgerCredited(Event):
    event_type = "test_projections.LedgerCredited"
    amount: int


class LedgerNoted(Event):
    """A type no projection here declares: it must never cost a handler call."""

    event_type = "test_projections.LedgerNoted"
    text: str


class Ledger(Projection):
    """Balances per ledger stream: increments (``add``) make a double apply visible.

    ``last_version`` is the stream version of the last applied event. With
    ``check_order`` every event first reads it back and fails unless its own version is
    exactly the next one: a regression, a gap or a repeat within a stream stops the runner.
    ``worker`` tags the ``applied`` rows (one per event, ``times`` counts applications).
    """

    name = "ledger"
    ledgers = Table(
        "ledgers",
        {
            "id": "text",
            "owner": "text",
            "balance": "integer",
            "credits": "integer",
            "last_version": "integer",
        },
        key="id",
        indexes=[Index("owner", "id")],
    )
    applied = Table(
        "applied",
        {
            "stream_id": "text",
            "version": "integer",
            "position": "integer",
            "worker": "text",
            "times": "integer",
            "applied_at": "float",
        },
        key=("stream_id", "version"),
    )

    def __init__(
        self,
        *,
        delay: float = 0.0,
        check_order: bool = False,
        placeholder: str = "?",
        worker: str = "",
        out: TextIO | None = None,
    ) -> None:
        self.delay = delay
        self.check_order = check_order
        self.placeholder = placeholder
        self.worker = worker
        self.out = out

    async def _arrive(self, ctx: Context) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow handler: batches stay in flight a while
        stored = ctx.stored
        if self.check_order:
            last = await ctx.fetchval(
                f"SELECT last_version FROM {ctx.table(self.ledgers)} WHERE id = "
                + self.placeholder,
                ctx.stream_id,
            )
            if stored.version != (last or 0) + 1:
                raise AssertionError(
                    f"{ctx.stream_id} version {stored.version} arrived after version {last}"
                )
        ctx.add(self.applied, (ctx.stream_id, stored.version), times=1)
        ctx.upsert(
            self.applied,
            stream_id=ctx.stream_id,
            version=stored.version,
            position=stored.position,
            worker=self.worker,
            applied_at=time.time(),
        )

    def _applied(self, ctx: Context) -> None:
        if self.out is not None:
            self.out.write(f"a {ctx.position}\n")
            self.out.flush()

    @handles(LedgerOpened)
    async def opened(self, event: LedgerOpened, ctx: Context) -> None:
        await self._arrive(ctx)
        ctx.upsert(
            self.ledgers,
            id=ctx.stream_id,
            owner=event.owner,
            balance=0,
            credits=0,
            last_version=ctx.stored.version,
        )
        self._applied(ctx)

    @handles(LedgerCredited)
    async def credited(self, event: LedgerCredited, ctx: Context) -> None:
        await self._arrive(ctx)
        ctx.add(self.ledgers, ctx.stream_id, balance=event.amount, credits=1)
        ctx.upsert(self.ledgers, id=ctx.stream_id, last_version=ctx.stored.version)
        self._applied(ctx)


# -- the worker process --------------------------------------------------------------------


def _stores(args: argparse.Namespace) -> tuple[EventStore, ReadStore]:
    if args.kind == "sqlite":
        from obelisk.projections._sqlite_read import SQLiteReadStore
        from obelisk.store import SQLiteEventStore

        return SQLiteEventStore(args.events), SQLiteReadStore(args.read)
    from obelisk.projections._pg_read import PostgresReadStore
    from obelisk.store.postgres import PostgresEventStore

    return (
        PostgresEventStore(args.events, schema=args.schema, pool_min_size=1),
        PostgresReadStore(args.read, schema=args.schema),
    )


async def _main(args: argparse.Namespace) -> None:
    out = sys.stdout
    projection = Ledger(
        delay=args.delay,
        check_order=True,
        placeholder="?" if args.kind == "sqlite" else "$1",
        worker=args.worker_id,
        out=out,
    )
    store, read_store = _stores(args)
    async with store, read_store:
        if args.mode == "runner":
            runner = ProjectionRunner(
                projection,
                store,
                read_store,
                page_size=args.page_size,
                lease_seconds=args.lease,
                poll_interval=0.05,
                owner=args.worker_id,
            )

            def committed(done: ProjectionRunner) -> None:
                out.write(f"c {done.position}\n")
                out.flush()

            runner.on_batch = committed
            await runner.run()
        else:
            worker = ProjectionWorker(
                projection,
                store,
                read_store,
                partitions=args.partitions,
                worker_id=args.worker_id,
                page_size=args.page_size,
                lease_seconds=args.lease,
                poll_interval=0.05,
            )
            await worker.run()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["sqlite", "postgresql"], required=True)
    parser.add_argument("--events", required=True, help="SQLite file or PostgreSQL DSN")
    parser.add_argument("--read", required=True, help="SQLite file or PostgreSQL DSN")
    parser.add_argument("--schema", default="public")
    parser.add_argument("--mode", choices=["runner", "worker"], default="runner")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--page-size", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(_main(_arguments()))
