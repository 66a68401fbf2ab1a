"""`obelisk bench` end to end: tiny sizes, JSON shape, options, verification.

Sizes are cut to about 1/100 of the documented ones (``--quick`` times the scale
variable) so the whole file runs in a few seconds. Nothing here asserts on a figure's
value: the machine is shared and noisy, and the bench is a measurement, not a test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from obelisk.application import Application, Command
from obelisk.bench.brokers import NATS_URL_ENV, REDIS_URL_ENV, BrokerKind, server_missing
from obelisk.bench.runner import SCALE_ENV, WorkloadResult
from obelisk.cli import app
from obelisk.demo.bank import OpenAccount

CORE_IDS = ["W1", "W2", "W3", "W4", "W6"]
LOADING_IDS = ["W3-snapshot", "W3-snapshot-behind", "cache-hit", "W2-cache", "W2-snapshots",
               "W2-fast-forward"]  # fmt: skip
# W4b-partitioned runs on PostgreSQL only (see test_bench_postgres.py).
PROJECTION_IDS = ["W4b", "rebuild", "lag"]
# The messaging workloads start their own broker server, when it is installed; worker-inbox
# runs on PostgreSQL only.
MESSAGING_SERVERS: list[tuple[str, BrokerKind]] = [
    ("relay-redis", "redis"), ("relay-nats", "nats"), ("e2e-latency", "redis"),
]  # fmt: skip
MESSAGING_IDS = [workload for workload, kind in MESSAGING_SERVERS if server_missing(kind) is None]
WORKLOAD_IDS = [*CORE_IDS, *LOADING_IDS, "W6-observed", *PROJECTION_IDS, *MESSAGING_IDS]
REQUIRED_FIELDS = {
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
    "meets_target",
}
TINY = {SCALE_ENV: "0.1"}


def bench(*args: str) -> Any:
    result = CliRunner().invoke(app, ["bench", "--quick", *args], env=TINY)
    return result


def bench_json(*args: str) -> list[dict[str, Any]]:
    result = bench("--json", *args)
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, list)
    return parsed


def test_a_quick_json_run_reports_every_workload_beside_its_raw_baseline() -> None:
    results = bench_json()

    assert [r["workload"] for r in results] == WORKLOAD_IDS
    for result in results:
        assert result.keys() >= REQUIRED_FIELDS, result.keys()
        assert result["backend"] == "sqlite"
        assert result["repeat"] == 2
        assert len(result["samples"]) == len(result["raw_samples"]) == 2
        assert isinstance(result["ratio_to_raw"], float)
        assert result["ratio_to_raw"] > 0
        assert result["raw_median"] > 0
        assert result["min"] <= result["median"] <= result["max"]
        assert isinstance(result["meets_target"], bool)
    by_id = {r["workload"]: r for r in results}
    assert by_id["W3"]["unit"] == "ms" and by_id["W3"]["higher_is_better"] is False
    assert [by_id[i]["target_ratio"] for i in CORE_IDS] == [0.8, 0.75, 0.67, 0.8, 7.0]
    # The loading workloads' targets: absolute times, or ratios to obelisk's own runs.
    assert [by_id[i]["target_value"] for i in LOADING_IDS[:3]] == [0.2, 0.4, 5.0]
    assert [by_id[i]["unit"] for i in LOADING_IDS] == [
        "ms", "ms", "us", "commands/s", "ms", "commands/s",
    ]  # fmt: skip
    assert by_id["W2-cache"]["target_ratio"] == 0.9
    assert by_id["W2-snapshots"]["target_ratio"] == pytest.approx(1 / 1.1)
    assert by_id["W2-snapshots"]["extra"]["p99_ms"] == by_id["W2-snapshots"]["median"]
    # Observing W6 is judged against plain W6 of the same run.
    assert by_id["W6-observed"]["target_ratio"] == 0.95
    assert by_id["W6-observed"]["unit"] == "commands/s"
    # W6 runs 64 clients at once, so the writer commits several commands per batch.
    assert by_id["W6"]["extra"]["mean_batch_size"] >= 1
    # Projections: W4b aims at a ratio and a rate, lag at an absolute p99.
    assert by_id["W4b"]["target_ratio"] == 0.5 and by_id["W4b"]["target_value"] == 150_000
    assert by_id["W4b"]["unit"] == by_id["rebuild"]["unit"] == "events/s"
    assert by_id["lag"]["unit"] == "ms" and by_id["lag"]["higher_is_better"] is False
    assert by_id["lag"]["target_ratio"] is None and by_id["lag"]["target_value"] == 100
    assert by_id["lag"]["extra"]["lag_p99_ms"] == by_id["lag"]["median"]
    # The rebuild's memory at a tenth of its log and at all of it, each in a fresh process.
    memory = by_id["rebuild"]["extra"]
    assert memory["large_events"] == by_id["rebuild"]["n"] == 10 * memory["small_events"]
    assert memory["peak_rss_mb_small"] > 0 and memory["peak_rss_mb_large"] > 0
    assert memory["peak_rss_ratio"] > 0
    # Messaging: relays aim at a rate and a ratio, the end-to-end latency at a p99.
    for relay in {"relay-redis", "relay-nats"} & by_id.keys():
        assert by_id[relay]["unit"] == "events/s" and by_id[relay]["n"] == 500
        assert by_id[relay]["target_ratio"] == 0.5 and by_id[relay]["target_value"] == 50_000
    if "e2e-latency" in by_id:
        latency = by_id["e2e-latency"]
        assert latency["unit"] == "ms" and latency["higher_is_better"] is False
        assert latency["target_ratio"] is None and latency["target_value"] == 50
        assert latency["extra"]["p99_ms"] == latency["median"]
        assert (
            latency["extra"]["p50_ms"] <= latency["extra"]["p99_ms"] <= latency["extra"]["max_ms"]
        )
        assert latency["extra"]["rate_per_s"] > 0


def test_the_workload_option_runs_only_the_workloads_named() -> None:
    assert [r["workload"] for r in bench_json("-w", "W3")] == ["W3"]
    assert [r["workload"] for r in bench_json("-w", "w4,W1")] == ["W1", "W4"]


def test_the_repeat_option_sets_the_number_of_runs_per_side() -> None:
    (result,) = bench_json("-w", "W3", "--repeat", "3")

    assert result["repeat"] == 3
    assert len(result["samples"]) == len(result["raw_samples"]) == 3


def test_the_table_names_every_workload_run_with_its_ratio_and_target() -> None:
    result = bench("-w", "W1", "-w", "W3")

    assert result.exit_code == 0, result.output
    assert "ratio" in result.stdout and "target" in result.stdout
    assert "W1 create" in result.stdout and "W3 replay" in result.stdout
    assert "W4" not in result.stdout


def test_a_sqlite_folder_url_keeps_the_files_there_and_removes_each_after_its_run(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "bench-files"

    results = bench_json("-w", "W3", "--store", f"sqlite:///{folder}")

    assert [r["workload"] for r in results] == ["W3"]
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    # Port 1 on loopback: nothing listens there, even where a PostgreSQL runs on 5432.
    "store",
    ["postgresql://127.0.0.1:1/obelisk", "postgres", "memory://", "mysql://x"],
)
def test_an_unsupported_or_unreachable_backend_is_refused_with_exit_code_2(store: str) -> None:
    result = bench("--store", store)

    assert result.exit_code == 2
    assert "error" in result.output.lower()
    assert result.stdout == ""


def test_an_unknown_workload_id_is_refused_with_exit_code_2() -> None:
    result = bench("-w", "W9")

    assert result.exit_code == 2
    assert "W9" in result.output and "W1" in result.output


def test_a_run_that_loses_commands_fails_verification_with_exit_code_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = Application.handle

    async def lossy(self: Application, command: Command, **kwargs: Any) -> int | None:
        if isinstance(command, OpenAccount) and command.account_id.endswith("3"):
            return None  # dropped: the account is never opened
        return await handle(self, command, **kwargs)

    monkeypatch.setattr(Application, "handle", lossy)

    result = bench("--json", "-w", "W1")

    assert result.exit_code == 1
    assert "verification failed" in result.output
    assert "W1" in result.output
    assert result.stdout == ""


def test_a_time_ratio_is_raw_time_over_obelisk_time_so_higher_is_better() -> None:
    def result(higher_is_better: bool, ours: float, raw: float) -> WorkloadResult:
        return WorkloadResult(
            workload="W0",
            name="x",
            title="x",
            baseline="x",
            backend="sqlite",
            unit="u",
            higher_is_better=higher_is_better,
            n=1,
            repeat=1,
            samples=[ours],
            raw_samples=[raw],
            target_ratio=1.0,
        )

    # Twice as fast as raw: 2.0 whether the unit is a rate or a time.
    assert result(True, ours=200.0, raw=100.0).ratio_to_raw == 2.0
    assert result(False, ours=5.0, raw=10.0).ratio_to_raw == 2.0
    assert result(False, ours=5.0, raw=10.0).meets_target
    assert not result(True, ours=50.0, raw=100.0).meets_target


def test_a_messaging_workload_is_skipped_with_the_reason_when_its_server_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obelisk.servers.nats import ThrowawayNats
    from obelisk.servers.redis import ThrowawayRedis

    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(NATS_URL_ENV, raising=False)
    monkeypatch.setattr(ThrowawayRedis, "binary", "no-such-redis-server")
    monkeypatch.setattr(ThrowawayNats, "binary", "no-such-nats-server")

    result = bench("-w", "W3,relay-redis,relay-nats,e2e-latency")

    assert result.exit_code == 0, result.output
    assert "W3 replay" in result.stdout
    text = " ".join(result.stdout.split())
    for workload in ("relay-redis", "relay-nats", "e2e-latency"):
        assert f"{workload}: skipped" in text
    assert "no-such-redis-server is not installed" in text and REDIS_URL_ENV in text


@pytest.mark.skipif(server_missing("redis") is not None, reason="redis-server is not installed")
def test_the_redis_workloads_use_the_named_server_and_leave_nothing_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from obelisk.servers.redis import ThrowawayRedis

    with ThrowawayRedis() as server:
        monkeypatch.setenv(REDIS_URL_ENV, server.url)

        results = bench_json("-w", "relay-redis,e2e-latency", "--repeat", "1")

        assert [r["workload"] for r in results] == ["relay-redis", "e2e-latency"]
        client = redis.Redis.from_url(server.url)
        try:
            assert client.keys("*") == []
        finally:
            client.close()
