"""``obelisk demo``: a flash sale over real HTTP, then every seat accounted for.

The service runs as its own process (``obelisk serve examples.flashsale:app``) on a free
local port; this process plays the buyers. Each buyer is an asyncio task with one
keep-alive connection: it looks at the sale's availability (revalidating its copy with
If-None-Match), reserves 1-4 seats in a section that shows some left, and then pays —
or, now and then, walks away and lets the reservation expire (its seats come back after
``hold`` seconds). Some reservations are sent twice with the same Idempotency-Key, as a
client retrying after a timeout would. The sale ends when every seat is sold (or at
``duration``); then the buyers stop, the workers finish, the service stops, and
:func:`~examples.flashsale.verify.check_sale` checks the outcome against the event store,
the read models and the simulated gateway's and mailer's ledgers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from examples.flashsale.client import HttpClient, HttpError, HttpResponse
from examples.flashsale.stats import summarize
from examples.flashsale.verify import SaleCheck, check_sale, settled

__all__ = ["DemoOptions", "SaleReport", "run_sale", "run_sale_cli"]

ROOT = Path(__file__).resolve().parents[2]  # the folder holding examples/


@dataclass(frozen=True)
class DemoOptions:
    clients: int = 64
    sections: int = 8
    seats: int = 250
    hold: float = 2.0
    duration: float = 60.0
    store: str | None = None
    broker: str | None = None
    pay_ratio: float = 0.8
    retry_ratio: float = 0.05
    seed: int = 1729


@dataclass
class SaleReport:
    options: DemoOptions
    store: str
    broker: str
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    made: list[str] = field(default_factory=list)
    sold_out: int = 0
    repeats: int = 0
    repeat_mismatches: int = 0
    max_lag_ms: float = 0.0
    cache: dict[str, Any] = field(default_factory=dict)
    check: SaleCheck = field(default_factory=SaleCheck)
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def verified(self) -> bool:
        return self.check.verified and not self.errors and self.repeat_mismatches == 0

    def as_json(self) -> dict[str, Any]:
        c = self.check
        return {
            "store": self.store, "broker": self.broker, "clients": self.options.clients,
            "seconds": round(self.seconds, 3), "requests": self.requests,
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "endpoints": {name: {"requests": len(values), **summarize(values)}
                          for name, values in sorted(self.latencies.items())},
            "statuses": dict(sorted(self.statuses.items())),
            "reservations": len(self.made), "confirmed": c.confirmed, "expired": c.expired,
            "sold_out_answers": self.sold_out, "idempotent_repeats": self.repeats,
            "stock": c.stock, "seats_sold": c.seats_sold, "oversold": c.oversold,
            "charges": c.charges, "refunds": c.refunds, "emails": c.emails,
            "projection_lag_ms_max": self.max_lag_ms,
            "cache_hit_ratio": self.cache.get("hit_ratio", 0.0),
            "verified": self.verified, "problems": [*self.errors, *c.problems],
        }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Service:
    """The service process: started, waited for, stopped gracefully."""

    def __init__(self, store: str, broker: str, hold: float, log: Path, seed: int) -> None:
        self.port = _free_port()
        self.store, self.broker, self.hold, self.log, self.seed = store, broker, hold, log, seed
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # The service gets this run's settings only: a FLASHSALE_* or OBELISK_READ_STORE of
        # the caller's would make it differ from what the verification reads.
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("FLASHSALE_", "OBELISK_"))}  # fmt: skip
        env = {**inherited, "OBELISK_STORE": self.store, "OBELISK_BROKER": self.broker,
               "FLASHSALE_HOLD_SECONDS": str(self.hold), "FLASHSALE_SEED": str(self.seed),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT),
                                             os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "obelisk", "serve", "examples.flashsale:app",
                "--port", str(self.port), "--app-dir", str(ROOT), "--log-level", "warning",
                env=env, stdout=log, stderr=log,
            )  # fmt: skip
        client = HttpClient("127.0.0.1", self.port, timeout=2)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    break
                with contextlib.suppress(HttpError):
                    if (await client.request("GET", "/health")).status == 200:
                        return
                await asyncio.sleep(0.1)
        finally:
            await client.close()
        raise RuntimeError(f"the service did not start; its log:\n{self.log.read_text()[-3000:]}")

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


class _Sale:
    """The buyers of one run."""

    def __init__(self, options: DemoOptions, port: int, report: SaleReport) -> None:
        self.options, self.port, self.report = options, port, report
        self.sale_id = f"sale-{uuid.uuid4().hex[:10]}"
        self.sections = [f"{self.sale_id}-s{i}" for i in range(options.sections)]
        self.done = asyncio.Event()

    async def call(
        self, client: HttpClient, name: str, method: str, path: str, body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:  # fmt: skip
        payload = b"" if body is None else msgspec.json.encode(body)
        started = time.perf_counter()
        response = await client.request(method, path, payload, headers)
        self.report.latencies[name].append(time.perf_counter() - started)
        self.report.statuses[f"{name} {response.status}"] += 1
        return response

    async def open(self) -> None:
        client = HttpClient("127.0.0.1", self.port)
        try:
            for i, section in enumerate(self.sections):
                answer = await self.call(client, "POST /sections", "POST", "/sections", {
                    "section_id": section, "sale_id": self.sale_id, "name": f"Block {i + 1}",
                    "stock": self.options.seats, "price_cents": 4000 + 500 * i})  # fmt: skip
                if answer.status != 201:
                    raise RuntimeError(f"opening {section}: {answer.status} {answer.body[:200]!r}")
            # The read side follows the events within milliseconds: the sale is on show
            # (not a 404) once its projection applied the openings. Buyers start then.
            deadline = time.monotonic() + 30
            path = f"/sales/{self.sale_id}/availability"
            while True:
                shown = await client.request("GET", path)
                if shown.status == 200 and len(msgspec.json.decode(shown.body)) == len(
                    self.sections
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sale never showed: {shown.status} {shown.body!r}")
                await asyncio.sleep(0.02)
        finally:
            await client.close()

    async def buyer(self, n: int, deadline: float) -> None:
        rng = random.Random(self.options.seed * 1_000_003 + n)
        client = HttpClient("127.0.0.1", self.port)
        etag: str | None = None
        sections: list[dict[str, Any]] = []
        path = f"/sales/{self.sale_id}/availability"
        try:
            for k in range(1_000_000):
                if self.done.is_set() or time.monotonic() > deadline:
                    return
                headers = {"if-none-match": etag} if etag else {}
                response = await self._get(client, path, headers)
                if response is not None:
                    etag, sections = response
                open_sections = [s for s in sections if s["available"] > 0]
                if not open_sections:
                    if sections and all(s["sold"] == s["stock"] for s in sections):
                        self.done.set()  # every seat sold
                        return
                    await asyncio.sleep(0.05)  # held seats may come back
                    continue
                await self._reserve(client, rng, rng.choice(open_sections), f"{n}-{k}")
        except HttpError as exc:
            self.report.errors.append(str(exc))
        finally:
            await client.close()

    async def _get(
        self, client: HttpClient, path: str, headers: dict[str, str]
    ) -> tuple[str | None, list[dict[str, Any]]] | None:
        name = "GET /sales/{id}/availability"
        answer = await self.call(client, name, "GET", path, headers=headers)
        if answer.status == 304:
            return None
        if answer.status != 200:
            raise HttpError(f"{name}: {answer.status} {answer.body[:200]!r}")
        return answer.headers.get("etag"), msgspec.json.decode(answer.body)

    async def _reserve(
        self, client: HttpClient, rng: random.Random, section: dict[str, Any], tag: str
    ) -> None:
        rid = f"{self.sale_id}-r{tag}"
        body = {"reservation_id": rid, "section_id": section["section_id"],
                "customer_id": f"c{rng.randrange(5000)}",
                "seats": rng.randint(1, min(4, section["available"]))}  # fmt: skip
        headers = {"idempotency-key": rid}
        first = await self.call(client, "POST /reservations", "POST", "/reservations", body,
                                headers)  # fmt: skip
        if first.status == 409 and b"sold_out" in first.body:
            self.report.sold_out += 1
            return
        if first.status != 201:
            raise HttpError(f"POST /reservations: {first.status} {first.body[:200]!r}")
        self.report.made.append(rid)
        if rng.random() < self.options.retry_ratio:  # a client retrying after a timeout
            self.report.repeats += 1
            again = await self.call(client, "POST /reservations", "POST", "/reservations",
                                    body, headers)  # fmt: skip
            if (again.status, again.body) != (first.status, first.body):
                self.report.repeat_mismatches += 1
                self.report.errors.append(f"a repeated reservation answered {again.status} "
                                          f"{again.body[:200]!r}")  # fmt: skip
        if rng.random() < self.options.pay_ratio:
            paid = await self.call(client, "POST /reservations/{id}/payment", "POST",
                                   f"/reservations/{rid}/payment")  # fmt: skip
            if paid.status not in (202, 409):  # 409: it expired before the buyer paid
                raise HttpError(f"POST payment: {paid.status} {paid.body[:200]!r}")

    async def watch(self) -> None:
        """Sample the service's dashboard data: projection lag and the cache's figures."""
        client = HttpClient("127.0.0.1", self.port)
        try:
            while True:
                with contextlib.suppress(HttpError):
                    response = await client.request("GET", "/dashboard/stats")
                    if response.status == 200:
                        stats = msgspec.json.decode(response.body)
                        lags = [p["lag_ms"] for p in stats.get("projections", [])]
                        self.report.max_lag_ms = max(
                            [self.report.max_lag_ms, stats.get("max_lag_ms", 0.0), *lags]
                        )
                        self.report.cache = stats.get("cache", {})
                await asyncio.sleep(0.5)
        finally:
            await client.close()


async def run_sale(options: DemoOptions, progress: Any = None) -> SaleReport:
    """Run one sale (see the module docstring) and check it."""
    with tempfile.TemporaryDirectory(prefix="obelisk-sale-") as folder:
        store = options.store or f"sqlite:///{Path(folder) / 'events.db'}"
        broker = options.broker or "memory://"
        from examples.flashsale.service import Settings

        read_url = Settings(store=store).read_store_url()
        report = SaleReport(options, store=store, broker=broker)
        service = _Service(store, broker, options.hold, Path(folder) / "service.log",
                           options.seed)  # fmt: skip
        try:
            await service.start()
            sale = _Sale(options, service.port, report)
            await sale.open()
            watcher = asyncio.create_task(sale.watch())
            started = time.perf_counter()
            deadline = time.monotonic() + options.duration
            buyers = [asyncio.create_task(sale.buyer(n, deadline))
                      for n in range(options.clients)]  # fmt: skip
            while not all(b.done() for b in buyers):
                await asyncio.wait(buyers, timeout=0.5)
                if progress is not None:
                    progress(report)
            report.seconds = time.perf_counter() - started
            for task in buyers:
                if task.exception() is not None:
                    report.errors.append(repr(task.exception()))
            # The last reservations expire or are paid; workers send the last e-mails.
            settle_by = time.monotonic() + options.hold * 3 + 30
            while time.monotonic() < settle_by:
                if await settled(read_url, sale.sale_id, len(report.made)):
                    break
                await asyncio.sleep(0.2)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        finally:
            await service.stop()
        report.check = await check_sale(store, read_url, sale.sale_id, sale.sections,
                                        report.made)  # fmt: skip
        if service.process is not None and service.process.returncode not in (0, None):
            report.errors.append(f"the service exited with {service.process.returncode}")
        return report


def run_sale_cli(options: DemoOptions, *, json_output: bool) -> int:
    """The command line's run: 0 verified, 1 not verified, 2 could not run."""
    from examples.flashsale.report import print_sale, progress_printer

    try:
        report = asyncio.run(run_sale(options, None if json_output else progress_printer()))
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if json_output:
        print(json.dumps(report.as_json()))
    else:
        print_sale(report)
    return 0 if report.verified else 1
