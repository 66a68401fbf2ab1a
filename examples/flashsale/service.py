"""The flash sale as a running service: the application, its read models, the relay to
the broker, the payment and e-mail workers, the expiry scheduler and the query cache —
started and stopped together, in one process or in several.

Everything that runs in the background is safe to run in several processes at once: the
projections and the relay hold leases (one process applies, the others stand by and take
over when it dies), the workers share consumer groups, the scheduler claims due commands,
and the query caches of the processes invalidate each other through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from examples.flashsale.domain import (
    DeclinePayment,
    Pay,
    PaymentRequested,
    Reservation,
    ReservationExpired,
    ReservationPaid,
    register,
)
from examples.flashsale.read_models import Availability, Expiries, Orders, read_sql
from examples.flashsale.services import Declined, Mailer, PaymentGateway
from examples.flashsale.stats import RequestStats
from obelisk import Application, DomainError, RetryPolicy
from obelisk.caching import Cached, QueryCache
from obelisk.messaging import broker_from_url
from obelisk.messaging.process import CommandScheduler
from obelisk.messaging.relay import OutboxRelay
from obelisk.messaging.worker import Backoff, MessageContext, MessageWorker
from obelisk.projections import ProjectionRunner, fetch_page, read_store_from_url
from obelisk.projections.pagination import KeysetPage

__all__ = ["FlashSale", "Settings", "tune_gc"]

_log = logging.getLogger("examples.flashsale")

# Background batches wait this long after a wake-up: under load, the commits of 10 ms make
# one read-store transaction instead of one each (measured: fewer, larger batches left the
# loop more time for requests); the read side lags by at most this much more.
LINGER = 0.01

# Events the workers need; the relay forwards these and no others.
RELAYED = (PaymentRequested, ReservationPaid, ReservationExpired)


Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=60.0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """How the service runs. ``from_env`` reads ``OBELISK_*`` (where things are) and
    ``FLASHSALE_*`` (how the simulated world behaves) variables."""

    store: str = "sqlite:///.flashsale/events.db"
    read_store: str | None = None  # None: beside the event store (same file folder / server)
    broker: str = "memory://"
    redis: str | None = None  # shares cache invalidations between processes
    hold_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    payment_latency: Seconds = 0.02
    payment_failure_rate: Rate = 0.05
    decline_rate: Rate = 0.05
    mail_latency: Seconds = 0.01
    mail_failure_rate: Rate = 0.05
    cache_max_age: Annotated[int, msgspec.Meta(ge=0)] = 1
    seed: int | None = None
    tune_gc: bool = True
    trace: bool = False  # spans to OpenTelemetry's global tracer provider (configure its SDK)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        fields: dict[str, Any] = {}
        for name in ("store", "read_store", "broker", "redis"):
            value = env.get(f"OBELISK_{name.upper()}")
            if value:
                fields[name] = value
        for name in cls.__struct_fields__:
            if name in ("store", "read_store", "broker", "redis"):
                continue  # where things are: OBELISK_* only (what `obelisk serve` sets)
            value = env.get(f"FLASHSALE_{name.upper()}")
            if value:
                fields[name] = value
        try:
            return msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"flash sale settings from the environment: {exc}") from None

    def read_store_url(self) -> str:
        if self.read_store:
            return self.read_store
        if self.store.startswith("sqlite:///"):
            events = Path(self.store.removeprefix("sqlite:///"))
            return f"sqlite:///{events.with_name('read.db')}"
        return self.store  # PostgreSQL: the read models live beside the events


def tune_gc() -> None:
    """Collect less often: a request allocates a few hundred short-lived objects, and with
    the default threshold (700) the cyclic collector ran hundreds of times a second, each
    pass a pause for every request in flight. Objects alive after start-up are frozen
    (never scanned again). Measured with wrk on reservations: 4,500-5,000/s with p99 56-61
    ms without it, 5,200-5,700/s with p99 24-27 ms with it (docs/flashsale.md). The cost is
    memory: garbage in reference cycles lives longer (the youngest generation is collected
    every 50,000 allocations, older ones 50 and 5,000 times less often). Process-wide, and
    not undone by ``stop()``: meant for the server process (``FLASHSALE_TUNE_GC=0``: off).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class FlashSale:
    """The service's parts, started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(self, settings: Settings, *, tracer: Any = None) -> None:
        self.settings = settings
        self.metrics: Any = None
        self.tracer: Any = tracer
        if tracer is None and settings.trace:
            from obelisk.observability.tracing import obelisk_tracer

            self.tracer = obelisk_tracer()
        observer = None
        with contextlib.suppress(ImportError):
            from obelisk.observability import Observer
            from obelisk.observability.metrics import Metrics

            self.metrics = Metrics()
            observer = Observer(metrics=self.metrics, tracer=self.tracer)
        # Several processes write the same sections: a command that lost a race to another
        # process is run again from a fresh load (every handler decides from state alone).
        retry = RetryPolicy(attempts=5)
        self.app = register(Application(settings.store, observer=observer, retry=retry))
        self.cache = QueryCache(max_entries=50_000)
        self.requests = RequestStats()
        self._summaries = QueryCache(max_entries=1, ttl=1.0)
        self.started_at = time.time()
        self.runners: list[ProjectionRunner] = []
        self.workers: list[MessageWorker] = []
        self.scheduler: CommandScheduler | None = None
        self.gateway: PaymentGateway | None = None
        self.mailer: Mailer | None = None
        self.read_store: Any = None
        self._lags: dict[str, dict[int, float]] = {}  # runner -> second -> largest delay
        self.max_lag = 0.0  # seconds, since start
        self._batches_seen: dict[str, int] = {}
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._stoppers: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.store.startswith("sqlite:///"):
            Path(s.store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        if s.tune_gc:
            tune_gc()

    async def _start(self) -> None:
        s = self.settings
        stack = self._stack
        await stack.enter_async_context(self.app)
        read_store = await stack.enter_async_context(read_store_from_url(s.read_store_url()))
        self.read_store = read_store
        broker = await stack.enter_async_context(broker_from_url(s.broker))
        import random

        rng = random.Random(s.seed)
        self.gateway = PaymentGateway(read_store, latency=s.payment_latency,
                                      failure_rate=s.payment_failure_rate, rng=rng,
                                      decline_rate=s.decline_rate)  # fmt: skip
        self.mailer = Mailer(read_store, latency=s.mail_latency,
                             failure_rate=s.mail_failure_rate, rng=rng)  # fmt: skip
        await self.gateway.ensure()
        await self.mailer.ensure()
        if s.redis:
            from obelisk.caching import RedisInvalidation, RedisQueryCache

            # Processes share query results through Redis (a miss in one process is often a
            # hit in Redis) and drop each other's local entries on invalidation.
            shared = RedisQueryCache(s.redis, prefix="flashsale:qc")
            stack.push_async_callback(shared.stop)  # before start: a failed start cleans up
            await shared.start()
            self.cache = QueryCache(max_entries=self.cache.max_entries, shared=shared)
            invalidation = RedisInvalidation(s.redis, self.cache, channel="flashsale:cache")
            stack.push_async_callback(invalidation.stop)
            await invalidation.start()

        expiries = type("Expiries", (Expiries,), {"hold_seconds": s.hold_seconds})
        self.scheduler = CommandScheduler(read_store, self.app, poll_interval=0.2)
        common: dict[str, Any] = {"lease_seconds": 5.0, "linger": LINGER, "tracer": self.tracer}
        self.runners = [
            ProjectionRunner(Availability(), self.app.store, read_store,
                             invalidate=self.cache.invalidate, **common),
            ProjectionRunner(Orders(), self.app.store, read_store, **common),
            ProjectionRunner(expiries(), self.app.store, read_store, **common),
            OutboxRelay(self.app.store, read_store, broker, name="flashsale",
                        types=[t.event_type for t in RELAYED], **common),
        ]  # fmt: skip
        self.workers = [
            MessageWorker(broker, self._on_payment, group="flashsale.payments",
                          concurrency=64, max_attempts=8, ack_timeout=30.0, tracer=self.tracer,
                          backoff=Backoff(base=0.05, maximum=1.0)),
            MessageWorker(broker, self._on_email, group="flashsale.emails",
                          concurrency=64, max_attempts=8, ack_timeout=30.0, tracer=self.tracer,
                          backoff=Backoff(base=0.05, maximum=1.0)),
        ]  # fmt: skip
        for runner in self.runners:
            runner.on_batch = self._batch_applied
        if self.metrics is not None:
            for runner in self.runners:
                if isinstance(runner, OutboxRelay):
                    self.metrics.watch_relay(runner)
                else:
                    self.metrics.watch_projection(runner)
            for worker in self.workers:
                self.metrics.watch_worker(worker)
        await self.scheduler.open()
        parts: list[Any] = [*self.runners, *self.workers, self.scheduler]
        for part in parts:
            self._tasks.append(asyncio.create_task(self._supervise(part)))
            self._stoppers.append(part.stop)

    def _batch_applied(self, runner: ProjectionRunner) -> None:
        """After each committed batch: how long its newest event took from the event
        store's commit into the read model (the lag a reader can see), per second."""
        recorded = runner.last_event_at
        if recorded is None or self._batches_seen.get(runner.name) == runner.batches:
            return  # a checkpoint-only commit (lease renewal, other types passed): no event
        self._batches_seen[runner.name] = runner.batches
        now = time.time()
        delay = max(0.0, now - recorded)
        second = int(now)
        lags = self._lags.setdefault(runner.name, {})
        if delay > lags.get(second, -1.0):
            lags[second] = delay
            for old in [s for s in lags if s < second - 60]:
                del lags[old]
        self.max_lag = max(self.max_lag, delay)

    def recent_lag(self, name: str, now: float, window: int = 2) -> float:
        """The largest commit-to-read-model delay of ``name``'s batches in the last
        ``window`` seconds (0 when it applied nothing then)."""
        lags = self._lags.get(name, {})
        last = int(now)
        return max((v for s, v in lags.items() if last - window < s <= last), default=0.0)

    async def _supervise(self, part: Any) -> None:
        try:
            await part.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("%r stopped", part)
            raise

    async def stop(self) -> None:
        """Stop the background parts (finishing what is in progress), then close."""
        for stop in self._stoppers:
            stop()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._stoppers.clear()
        # The last batches' invalidations reach Redis and the other processes before the
        # connections close (else they would serve the replaced figures until the next).
        try:
            await asyncio.wait_for(self.cache.flush(), 10)
        except Exception as exc:  # never keeps the service from stopping
            _log.warning("cache invalidations not flushed at stop: %s", exc)
        await self._stack.aclose()

    def failures(self) -> list[str]:
        """Background parts that stopped with an error (the health check's answer)."""
        out = []
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                out.append(repr(task.exception()))
        return out

    # -- workers -------------------------------------------------------------------------

    async def _on_payment(self, ctx: MessageContext) -> None:
        event = ctx.event
        if not isinstance(event, PaymentRequested):
            return
        assert self.gateway is not None
        reservation_id = ctx.message.key
        ids = {"correlation_id": ctx.correlation_id, "causation_id": ctx.causation_id}
        try:
            charge_id = await self.gateway.charge(reservation_id, event.amount_cents)
        except Declined as exc:
            await self.app.handle(DeclinePayment(reservation_id=reservation_id, reason=str(exc)),
                                  idempotency_key=f"decline:{ctx.message.id}", **ids)  # fmt: skip
            return
        try:
            await self.app.handle(Pay(reservation_id=reservation_id, charge_id=charge_id),
                                  idempotency_key=f"pay:{ctx.message.id}", **ids)  # fmt: skip
        except DomainError:
            # Expired while the charge went through: the seats are gone, so is the money.
            await self.gateway.refund(charge_id)

    async def _on_email(self, ctx: MessageContext) -> None:
        event = ctx.event
        if not isinstance(event, ReservationPaid | ReservationExpired):
            return
        assert self.mailer is not None
        reservation = await self.app.get(Reservation, ctx.message.key)
        kind = "confirmation" if isinstance(event, ReservationPaid) else "expiry"
        await self.mailer.send(ctx.message.id, f"{reservation.customer_id}@example.com", kind,
                               reservation.id)  # fmt: skip

    # -- queries -------------------------------------------------------------------------

    async def availability(self, section_id: str) -> Cached[bytes | None]:
        """A section's availability as a JSON body (None: no such section), cached."""

        async def load() -> bytes | None:
            rows = await self.read_store.query(
                read_sql(
                    self.read_store,
                    "SELECT section_id, sale_id, name, stock, held, sold, price_cents "
                    "FROM {availability} WHERE section_id = ?",
                ),
                section_id,
            )
            return _encode_sections(rows)[0] if rows else None

        return await self.cache.get(f"section:{section_id}", load, tags=(f"section:{section_id}",))

    async def sale_availability(self, sale_id: str) -> Cached[bytes | None]:
        """Every section of a sale, as one JSON body (None: no such sale), cached."""

        async def load() -> bytes | None:
            rows = await self.read_store.query(
                read_sql(
                    self.read_store,
                    "SELECT section_id, sale_id, name, stock, held, sold, price_cents "
                    "FROM {availability} WHERE sale_id = ? ORDER BY section_id",
                ),
                sale_id,
            )
            if not rows:
                return None
            return b"[" + b",".join(_encode_sections(rows)) + b"]"

        return await self.cache.get(f"sale:{sale_id}", load, tags=(f"sale:{sale_id}",))

    async def orders(self, customer_id: str, *, after: str | None, limit: int) -> KeysetPage:
        """A customer's reservations, a keyset page at a time (not cached: read by one)."""
        return await fetch_page(self.read_store, Orders.orders, order_by=("reservation_id",),
                                where={"customer_id": customer_id}, after=after,
                                limit=limit)  # fmt: skip

    async def sale_summary(self) -> dict[str, int]:
        """Counts from the read models (what the dashboard shows)."""
        seats = await self.read_store.query(read_sql(self.read_store,
            "SELECT COALESCE(SUM(stock), 0), COALESCE(SUM(held), 0), COALESCE(SUM(sold), 0), "
            "COALESCE(SUM(CASE WHEN held + sold > stock THEN held + sold - stock ELSE 0 END),"
            " 0) FROM {availability}"
        ))  # fmt: skip
        states = await self.read_store.query(
            read_sql(self.read_store, "SELECT state, COUNT(*) FROM {orders} GROUP BY state")
        )
        by_state = {row[0]: int(row[1]) for row in states}
        stock, held, sold, oversold = (int(v) for v in seats[0])
        return {"reservations": sum(by_state.values()), "paid": by_state.get("paid", 0),
                "expired": by_state.get("expired", 0), "seats_held": held,
                "seats_sold": sold, "stock": stock, "oversold": oversold}  # fmt: skip

    async def dashboard_stats(self) -> dict[str, Any]:
        """The dashboard's sample: requests, latency, projection lag, cache, the sale."""
        now = time.time()
        out: dict[str, Any] = {"time": now, **self.requests.snapshot(now)}
        # Lag as a reader sees it: how long the newest event of a recent batch took from its
        # commit to the read model (the runner's own ``known_lag`` is 0 whenever it is
        # caught up, which under a steady load is nearly always).
        out["projections"] = [
            {
                "name": runner.name,
                "lag_ms": round(self.recent_lag(runner.name, now) * 1000, 1),
                "lag_positions": runner.known_lag().positions,
            }
            for runner in self.runners
        ]
        out["max_lag_ms"] = round(self.max_lag * 1000, 1)
        stats = self.cache.stats
        out["cache"] = {"hits": stats.hits, "misses": stats.misses,
                        "hit_ratio": round(stats.hit_ratio, 4)}  # fmt: skip
        # The sale's counts scan the read models: once a second at most, however many
        # dashboards poll (the query cache's single-flight and TTL do the bounding).
        try:
            out["sale"] = (await self._summaries.get("summary", self.sale_summary)).value
        except Exception as exc:  # tables not there yet: the dashboard still shows the rest
            _log.debug("sale summary: %s", exc)
            out["sale"] = {}
        return out


_SECTION = msgspec.json.Encoder()


def _encode_sections(rows: list[tuple[Any, ...]]) -> list[bytes]:
    return [
        _SECTION.encode(
            {
                "section_id": r[0],
                "sale_id": r[1],
                "name": r[2],
                "stock": r[3],
                "held": r[4],
                "sold": r[5],
                "available": r[3] - r[4] - r[5],
                "price_cents": r[6],
            }
        )
        for r in rows
    ]
