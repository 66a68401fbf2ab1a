"""Metrics, traces and the slow-command log of an Application, on a real SQLite file.

Metric values are read from the Prometheus exposition (what a scraper sees); spans from the
OpenTelemetry SDK's in-memory exporter. Nothing here asserts on how long anything took
except against budgets the test sets far apart (a sleep of 50 ms against a 10 ms budget).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from obelisk.application import Application, Command, UnitOfWork
from obelisk.demo.bank import Account, Deposit, OpenAccount, register_bank_handlers
from obelisk.errors import AggregateNotFound, ValidationError
from obelisk.observability import Observer
from obelisk.observability.asgi import metrics_asgi_app
from obelisk.observability.metrics import Metrics
from obelisk.observability.tracing import CountingSpanExporter, link_to, obelisk_tracer
from obelisk.store import SQLiteEventStore


def _app(tmp_path: Path, observer: Observer) -> Application:
    url = f"sqlite:///{tmp_path / 'obs.db'}"
    return register_bank_handlers(Application(url, observer=observer))


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_commands_loads_appends_and_the_cache_are_measured(tmp_path: Path) -> None:
    metrics = Metrics()
    async with _app(tmp_path, Observer(metrics=metrics)) as app:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        for amount in (1, 2, 3):
            await app.handle(Deposit(account_id="a", amount=amount))
        with pytest.raises(ValidationError):
            await app.handle(Deposit(account_id="a", amount=-5))  # invalid: rejected
        with pytest.raises(AggregateNotFound):
            await app.handle(Deposit(account_id="nobody", amount=5))  # rejected too
        app.cache.clear()
        await app.handle(Deposit(account_id="a", amount=4))  # a miss: one load

        samples = _samples(metrics)
    count = "obelisk_command_seconds_count"
    assert samples[(count, (("command", "OpenAccount"), ("outcome", "ok")))] == 1
    assert samples[(count, (("command", "Deposit"), ("outcome", "ok")))] == 4
    assert samples[(count, (("command", "Deposit"), ("outcome", "rejected")))] == 2
    # Group commit, per batch: five appends, each in a batch of its own here.
    assert samples[("obelisk_append_batch_size_count", ())] == 5
    assert samples[("obelisk_append_batch_size_sum", ())] == 5
    assert samples[("obelisk_group_commit_seconds_count", ())] == 5
    account = (("aggregate_type", "Account"),)
    # Two loads: "nobody" (nothing to replay) and "a" after the cache was cleared.
    assert samples[("obelisk_aggregate_load_seconds_count", account)] == 1
    assert samples[("obelisk_events_replayed_sum", account)] == 4
    assert samples[("obelisk_cache_hits_total", ())] == 3
    assert samples[("obelisk_cache_misses_total", ())] == 2
    assert samples[("obelisk_appends_total", ())] == 5
    assert samples[("obelisk_append_batches_total", ())] >= 1


async def test_a_user_id_never_becomes_a_label(tmp_path: Path) -> None:
    metrics = Metrics()
    async with _app(tmp_path, Observer(metrics=metrics)) as app:
        for n in range(200):
            await app.handle(OpenAccount(account_id=f"user-{n}", owner=f"owner-{n}"))
        label_sets = {labels for (name, labels) in _samples(metrics) if name.startswith("obelisk_")}
    values = {value for labels in label_sets for _, value in labels}
    assert not any(value.startswith(("user-", "owner-")) for value in values), values
    assert {v for k, v in (pair for labels in label_sets for pair in labels) if k == "command"} == {
        "OpenAccount"
    }


def test_each_label_admits_a_bounded_number_of_values() -> None:
    metrics = Metrics(max_label_values=3)
    for n in range(50):
        metrics.loads.child(f"Type{n}").observe(0.001)
    labels = {
        dict(labels)["aggregate_type"]
        for (name, labels) in _samples(metrics)
        if name == "obelisk_aggregate_load_seconds_count"
    }
    assert labels == {"Type0", "Type1", "Type2", "other"}
    assert sum(
        value
        for (name, labels), value in _samples(metrics).items()
        if name == "obelisk_aggregate_load_seconds_count"
    ) == 50
    assert metrics.loads.guards[0].refused == 47


class SlowDeposit(Command):
    command_type = "test_obs.SlowDeposit"
    account_id: str
    pause: float


async def test_a_command_over_its_budget_is_logged_with_where_its_time_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    observer = Observer(slow_command_seconds=0.01)
    async with _app(tmp_path, observer) as app:

        @app.handler(SlowDeposit)
        async def slow(uow: UnitOfWork, cmd: SlowDeposit) -> None:
            account = await uow.get(Account, cmd.account_id)
            await asyncio.sleep(cmd.pause)
            account.deposit(1)

        await app.handle(OpenAccount(account_id="a", owner="ada"))
        with caplog.at_level(logging.WARNING, logger="obelisk.slow_commands"):
            await app.handle(SlowDeposit(account_id="a", pause=0.0))
            await app.handle(SlowDeposit(account_id="a", pause=0.05))
    slow_records = [r for r in caplog.records if r.name == "obelisk.slow_commands"]
    assert len(slow_records) == observer.slow_commands == 1
    record = slow_records[0].__dict__
    assert record["command"] == "test_obs.SlowDeposit" and record["outcome"] == "ok"
    assert record["seconds"] >= 0.05
    assert record["handler_seconds"] >= 0.05  # the sleep is the handler's own time
    assert record["loads"] == 0  # a cache hit
    assert record["handler_seconds"] + record["append_seconds"] <= record["seconds"] + 1e-9


def _tracing() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return obelisk_tracer(provider), exporter


async def test_a_traced_command_has_spans_for_its_load_and_its_append(tmp_path: Path) -> None:
    tracer, exporter = _tracing()
    async with _app(tmp_path, Observer(tracer=tracer)) as app:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        app.cache.clear()
        await app.handle(Deposit(account_id="a", amount=1))
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert names.count("obelisk.command Deposit") == 1
    deposit = next(s for s in spans if s.name == "obelisk.command Deposit")
    parent = deposit.context.span_id
    children = [s for s in spans if s.parent is not None and s.parent.span_id == parent]
    assert sorted(s.name for s in children) == ["obelisk.append", "obelisk.load"]
    load = next(s for s in children if s.name == "obelisk.load")
    assert load.attributes is not None and load.attributes["obelisk.aggregate_type"] == "Account"


async def test_a_sample_rate_of_zero_traces_nothing(tmp_path: Path) -> None:
    tracer, exporter = _tracing()
    async with _app(tmp_path, Observer(tracer=tracer, trace_sample=0.0)) as app:
        for n in range(20):
            await app.handle(OpenAccount(account_id=f"a{n}", owner="ada"))
    assert exporter.get_finished_spans() == ()


class _Unreachable:
    """An exporter whose collector is down."""

    def export(self, spans: Any) -> Any:
        raise ConnectionRefusedError("collector at localhost:4317 refused the connection")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return False


async def test_an_unreachable_trace_exporter_drops_and_counts_spans_and_the_app_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = CountingSpanExporter(_Unreachable())
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(guarded))  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.add_source(guarded.metrics)
    observer = Observer(metrics=metrics, tracer=obelisk_tracer(provider))
    async with _app(tmp_path, observer) as app:
        for n in range(5):
            await app.handle(OpenAccount(account_id=f"a{n}", owner="ada"))
        assert await app.store.stream_version("a4") == 1
    assert guarded.dropped >= 5 and guarded.exported == 0
    assert _samples(metrics)[("obelisk_spans_dropped_total", ())] == guarded.dropped
    assert "spans are dropped and counted" in caplog.text


async def test_the_asgi_helper_serves_the_exposition(tmp_path: Path) -> None:
    metrics = Metrics()
    async with _app(tmp_path, Observer(metrics=metrics)) as app:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asgi = metrics_asgi_app(metrics)
        await asgi({"type": "http", "method": "GET", "path": "/metrics"}, None, send)
        assert sent[0]["status"] == 200
        assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/plain")
        line = b'obelisk_command_seconds_count{command="OpenAccount",outcome="ok"} 1.0'
        assert line in sent[1]["body"]
        sent.clear()
        await asgi({"type": "http", "method": "POST", "path": "/metrics"}, None, send)
        assert sent[0]["status"] == 405


def test_observer_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="trace_sample"):
        Observer(trace_sample=1.5)
    with pytest.raises(ValueError, match="slow_command_seconds"):
        Observer(slow_command_seconds=0)


async def test_a_traced_commands_events_carry_its_trace_so_a_later_handler_links_to_it(
    tmp_path: Path,
) -> None:
    tracer, exporter = _tracing()
    async with _app(tmp_path, Observer(tracer=tracer)) as app:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
    command = next(s for s in exporter.get_finished_spans() if s.name.startswith("obelisk.command"))

    # Another process: its own store object, reading the log.
    async with SQLiteEventStore(tmp_path / "obs.db") as store:
        (stored,) = await store.read_all()
        assert stored.trace_context is not None
        with tracer.start_as_current_span("projection batch", links=link_to(stored)):
            pass
    handler = next(s for s in exporter.get_finished_spans() if s.name == "projection batch")
    (link,) = handler.links
    assert link.context.trace_id == command.context.trace_id
    assert link.context.span_id == command.context.span_id


async def test_an_untraced_or_garbled_trace_context_links_to_nothing(tmp_path: Path) -> None:
    async with _app(tmp_path, Observer(metrics=Metrics())) as app:
        await app.handle(OpenAccount(account_id="a", owner="ada"))
        (stored,) = await app.store.read_all()
    assert stored.trace_context is None and link_to(stored) == []
    for garbled in ("", "00-xyz", "00-" + "g" * 32 + "-" + "0" * 16 + "-01", "00-" + "0" * 32
                    + "-" + "0" * 16 + "-01"):  # fmt: skip
        assert link_to(msgspec.structs.replace(stored, trace_context=garbled)) == []
