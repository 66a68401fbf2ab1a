"""`obelisk bench` on PostgreSQL end to end: every workload incl. bulk, tiny sizes.

Runs against the session's PostgreSQL server (the ``postgres_dsn`` fixture), plus one tiny
run on a throwaway server the bench starts itself. Nothing asserts on a figure's value: the
machine is shared and noisy, and the bench is a measurement, not a test.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from obelisk.bench.backends import backend_from_option
from obelisk.bench.measure import BenchError
from obelisk.bench.pg_backend import PostgresBackend
from obelisk.bench.runner import SCALE_ENV
from obelisk.cli import app

WORKLOAD_IDS = [
    "W1", "W2", "W3", "W4", "W6", "bulk",
    "W3-snapshot", "W3-snapshot-behind", "cache-hit", "W2-cache", "W2-snapshots",
    "W2-fast-forward", "W6-observed", "W4b", "W4b-partitioned", "rebuild", "lag",
    "relay-redis", "relay-nats", "e2e-latency", "worker-inbox",
]  # fmt: skip
STABLE_FIELDS = {
    "workload",
    "backend",
    "unit",
    "median",
    "min",
    "max",
    "raw_median",
    "ratio_to_raw",
    "repeat",
    "n",
    "target_ratio",
    "target_value",
    "meets_target",
}
# --quick is a tenth of the documented sizes; this makes it a hundredth (a few seconds).
TINY = {SCALE_ENV: "0.1"}


def bench(*args: str) -> Any:
    return CliRunner().invoke(app, ["bench", "--quick", *args], env=TINY)


def bench_json(*args: str) -> list[dict[str, Any]]:
    result = bench("--json", *args)
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, list)
    return parsed


async def bench_schemas(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%' ORDER BY 1"
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


def test_a_quick_json_run_on_postgresql_reports_every_workload_beside_raw_asyncpg(
    postgres_dsn: str,
) -> None:
    # Plain (not async) tests: the CLI runs its own event loop.
    before = asyncio.run(bench_schemas(postgres_dsn))

    results = bench_json("--store", postgres_dsn)

    assert [r["workload"] for r in results] == WORKLOAD_IDS
    for result in results:
        assert result.keys() >= STABLE_FIELDS, result.keys()
        assert result["backend"] == "postgresql"
        assert result["repeat"] == 2
        assert len(result["samples"]) == len(result["raw_samples"]) == 2
        assert result["median"] > 0 and result["raw_median"] > 0
        assert isinstance(result["ratio_to_raw"], float) and result["ratio_to_raw"] > 0
        assert result["min"] <= result["median"] <= result["max"]
        assert isinstance(result["meets_target"], bool)
    by_id = {r["workload"]: r for r in results}
    # W6 on PostgreSQL is judged by its command rate; bulk by both its rate and its ratio.
    assert by_id["W6"]["target_ratio"] is None and by_id["W6"]["target_value"] == 40_000
    assert by_id["W6"]["meets_target"] == (by_id["W6"]["median"] >= 40_000)
    assert by_id["bulk"]["target_ratio"] == 0.5
    assert by_id["bulk"]["target_value"] == 150_000
    assert by_id["bulk"]["unit"] == "events/s"
    assert [by_id[i]["target_ratio"] for i in ("W1", "W3", "W4")] == [0.8, 0.67, 0.8]
    assert by_id["W6"]["extra"]["mean_batch_size"] >= 1
    # Loading through a snapshot: at most 0.5 ms at its head, 1 ms 100 events behind.
    assert [by_id[i]["target_value"] for i in ("W3-snapshot", "W3-snapshot-behind")] == [0.5, 1.0]
    # Projections: W4b's rate target is PostgreSQL's own; the partitioned run is judged
    # against one worker of the same run; lag by its p99 alone.
    assert by_id["W4b"]["target_ratio"] == 0.5 and by_id["W4b"]["target_value"] == 100_000
    assert by_id["W4b-partitioned"]["target_ratio"] == 2.5
    assert by_id["W4b-partitioned"]["extra"]["workers"] == 4
    assert by_id["lag"]["target_value"] == 100 and by_id["lag"]["unit"] == "ms"
    assert by_id["rebuild"]["extra"]["large_events"] == by_id["rebuild"]["n"]
    # Messaging: the inbox worker (PostgreSQL only) is judged by its rate alone.
    assert by_id["worker-inbox"]["unit"] == "messages/s"
    assert by_id["worker-inbox"]["target_ratio"] is None
    assert by_id["worker-inbox"]["target_value"] == 10_000
    assert by_id["e2e-latency"]["extra"]["p99_ms"] == by_id["e2e-latency"]["median"]
    # Every run's schema was dropped after it (read stores and extra logs included).
    assert asyncio.run(bench_schemas(postgres_dsn)) == before


def test_the_table_footer_names_the_postgresql_version_and_durability_settings(
    postgres_dsn: str,
) -> None:
    result = bench("-w", "W3", "--store", postgres_dsn)

    assert result.exit_code == 0, result.output
    assert "W3 replay" in result.stdout
    assert "PostgreSQL 15" in result.stdout
    assert "fsync=on" in result.stdout and "synchronous_commit=on" in result.stdout


def test_bulk_is_skipped_with_a_note_on_sqlite() -> None:
    result = bench("-w", "W3,bulk")

    assert result.exit_code == 0, result.output
    assert "W3 replay" in result.stdout
    assert "bulk: skipped" in result.stdout
    assert "postgresql" in result.stdout


def test_postgresql_auto_starts_a_throwaway_server_runs_and_stops_it() -> None:
    results = bench_json("-w", "W3", "--repeat", "1", "--store", "postgresql://auto")

    assert [r["workload"] for r in results] == ["W3"]
    assert results[0]["backend"] == "postgresql"
    assert results[0]["ratio_to_raw"] > 0


async def test_the_throwaway_server_is_stopped_even_when_a_run_fails() -> None:
    backend = backend_from_option("postgresql://auto")
    assert isinstance(backend, PostgresBackend)
    dsn = ""

    with pytest.raises(RuntimeError, match="a run failed"):
        async with backend:
            dsn = backend.dsn
            await backend.discard(backend.fresh("W1-obelisk-1"))
            raise RuntimeError("a run failed")

    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=5)


@pytest.mark.parametrize(
    ("store", "complaint"),
    [
        ("postgresql", "postgresql://auto"),
        ("postgresql://auto?schema=x", "schema"),
        ("postgresql://auto?max_in_flight=20&pool_max_size=4", "max_in_flight"),
        ("postgresql://auto/somedb", "only store options"),
    ],
)
def test_a_malformed_postgresql_option_is_refused_with_a_hint(store: str, complaint: str) -> None:
    with pytest.raises(BenchError, match=complaint):
        backend_from_option(store)


def test_an_unreachable_server_is_refused_with_exit_code_2() -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    result = bench("-w", "W3", "--store", "postgresql://postgres@127.0.0.1:1/postgres")

    assert result.exit_code == 2
    assert "cannot use PostgreSQL" in result.output
    assert result.stdout == ""
