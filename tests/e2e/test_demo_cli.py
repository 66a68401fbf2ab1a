"""`obelisk demo`: the CLI end to end, and proof that its verification can fail."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import obelisk.demo.run as demo_run
from obelisk.application import Application
from obelisk.cli import app as cli_app
from obelisk.demo.bank import Deposit, MoneyDeposited, register_bank_handlers
from obelisk.demo.report import percentile
from obelisk.demo.run import make_plan, run_demo
from obelisk.demo.verify import MAX_MISMATCHES, Expected, Verification, check_store, verify

SMALL = ["--clients", "8", "--accounts", "50", "--deposits", "3"]
SMALL_EVENTS = 50 * (1 + 3)
JSON_FIELDS = {
    "commands",
    "commands_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "events",
    "accounts",
    "verified",
    "store",
    "mismatches",
}


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["demo-bank", *args])


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _script() -> Path:
    return Path(sys.executable).parent / "obelisk"


def _count_events(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM obelisk_events").fetchone()
    conn.close()
    return int(count)


async def _tampering_check(app: Application, expected: Expected) -> Verification:
    """The real check, after slipping one extra deposit into the first account."""
    victim = next(iter(expected.balances))
    await app.store.append(victim, [MoneyDeposited(amount=1)])
    return await check_store(app, expected)


# -- the CLI -------------------------------------------------------------------------------


def test_the_demo_prints_one_json_object_and_verifies_every_account() -> None:
    result = _invoke(*SMALL, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report.keys() >= JSON_FIELDS
    assert report["verified"] is True
    assert report["mismatches"] == []
    assert report["commands"] == SMALL_EVENTS
    assert report["events"] == SMALL_EVENTS
    assert report["accounts"] == 50
    assert report["accounts_verified"] == 50
    assert report["failed"] == 0
    assert report["commands_per_s"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]


def test_the_default_store_is_a_temporary_sqlite_file_removed_after_the_run() -> None:
    result = _invoke(*SMALL, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["store"].startswith("sqlite:///")
    assert report["temporary_store"] is True
    db_file = Path(report["store"].removeprefix("sqlite:///"))
    assert not db_file.parent.exists()


def test_the_table_output_names_every_metric_and_the_verdict() -> None:
    result = _invoke(*SMALL)

    assert result.exit_code == 0, result.output
    for row in (
        "commands/s",
        "latency p50",
        "latency p95",
        "latency p99",
        "commands",
        "events stored",
        "accounts verified",
        "verification",
    ):
        assert row in result.stdout
    assert "50 / 50" in result.stdout
    assert "passed" in result.stdout
    # Not a terminal: no progress bar is drawn on stderr.
    assert result.stderr == ""


def test_the_installed_console_script_runs_the_demo_against_a_given_store(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "demo.db"
    completed = subprocess.run(
        [str(_script()), "demo-bank", *SMALL, "--json", "--store", _url(db_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["verified"] is True
    assert report["events"] == SMALL_EVENTS
    assert report["store"] == _url(db_file)
    assert report["temporary_store"] is False
    # Counted by SQLite itself, not by obelisk: the file really holds the run's events.
    assert _count_events(db_file) == SMALL_EVENTS


def test_a_second_run_on_the_same_store_verifies_only_its_own_events(tmp_path: Path) -> None:
    url = _url(tmp_path / "demo.db")
    first = _invoke(*SMALL, "--json", "--store", url)
    second = _invoke(*SMALL, "--json", "--store", url)

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["events"] == SMALL_EVENTS
    assert _count_events(tmp_path / "demo.db") == 2 * SMALL_EVENTS


def test_a_failed_verification_exits_with_1_and_reports_verified_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_run, "check_store", _tampering_check)

    result = _invoke(*SMALL, "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert report["events"] == SMALL_EVENTS  # counted before the tampering
    assert report["accounts_verified"] == 49
    assert any("balance" in line for line in report["mismatches"])
    assert any(f"new events, expected {SMALL_EVENTS}" in line for line in report["mismatches"])


def test_a_failed_verification_shows_failed_and_each_mismatch_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_run, "check_store", _tampering_check)

    result = _invoke(*SMALL)

    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout
    assert "passed" not in result.stdout
    assert "mismatch: account demo-" in result.stdout


def test_a_command_that_fails_during_the_run_fails_the_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_make_plan = demo_run.make_plan

    def plan_with_a_stray_deposit(**kwargs: Any) -> demo_run.Plan:
        plan = real_make_plan(**kwargs)
        plan.deposits[0].append(Deposit(account_id="never-opened", amount=1))
        return plan

    monkeypatch.setattr(demo_run, "make_plan", plan_with_a_stray_deposit)

    result = _invoke(*SMALL, "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert report["failed"] == 1
    assert report["commands"] == SMALL_EVENTS + 1
    assert report["mismatches"][0] == "1 command failed"
    assert "never-opened" in report["mismatches"][1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "--clients"),
        (["--accounts", "0"], "--accounts"),
        (["--deposits", "-1"], "--deposits"),
        (["--store", "mysql://nowhere"], "unsupported store URL"),
        (["--store", "postgresql://nowhere.invalid/db"], "PostgreSQL is unreachable"),
    ],
)
def test_a_run_that_cannot_start_exits_with_2_and_says_why(args: list[str], message: str) -> None:
    result = _invoke(*args, "--json")

    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


# -- run_demo and verify -------------------------------------------------------------------


async def _small_run(url: str) -> demo_run.DemoReport:
    return await run_demo(clients=8, accounts=50, deposits=3, store_url=url)


async def test_verify_passes_on_an_untouched_store_after_the_run(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _url(tmp_path / "demo.db")
    report = await _small_run(url)

    async with register_bank_handlers(Application(store=url)) as app:
        assert await verify(app, report.expected) == []
    assert report.verified


async def test_verify_reports_an_account_whose_expected_total_is_wrong(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _url(tmp_path / "demo.db")
    report = await _small_run(url)
    balances = dict(report.expected.balances)
    victim = sorted(balances)[7]
    balances[victim] += 5
    wrong = replace(report.expected, balances=balances)

    async with register_bank_handlers(Application(store=url)) as app:
        mismatches = await verify(app, wrong)
        checked = await check_store(app, wrong)

    assert f"account {victim}: balance {balances[victim] - 5}, expected {balances[victim]}" in (
        mismatches
    )
    assert any(line.startswith(f"log: account {victim} deposits sum") for line in mismatches)
    assert all(victim in line for line in mismatches)
    assert checked.accounts_verified == 49


async def test_verify_reports_a_wrong_number_of_deposits(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _url(tmp_path / "demo.db")
    report = await _small_run(url)
    wrong = replace(report.expected, deposits=4)

    async with register_bank_handlers(Application(store=url)) as app:
        mismatches = await verify(app, wrong)

    assert any("version 4, expected 5" in line for line in mismatches)
    assert any("new events, expected 250" in line for line in mismatches)
    assert any("read_all returned 200 events, expected 250" in line for line in mismatches)


async def test_verify_notices_a_deposit_appended_behind_the_runs_back(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _url(tmp_path / "demo.db")
    report = await _small_run(url)
    victim = sorted(report.expected.balances)[0]

    async with register_bank_handlers(Application(store=url)) as app:
        await app.store.append(victim, [MoneyDeposited(amount=3)])
        mismatches = await verify(app, report.expected)

    expected_balance = report.expected.balances[victim]
    assert (
        f"account {victim}: balance {expected_balance + 3}, expected {expected_balance}"
        in mismatches
    )
    assert f"log: account {victim} has 4 deposits, expected 3" in mismatches


async def test_verify_notices_an_event_removed_from_the_middle_of_the_log(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    db_file = tmp_path / "demo.db"
    report = await _small_run(_url(db_file))
    with sqlite3.connect(db_file) as conn:
        conn.execute("DELETE FROM obelisk_events WHERE position = 120")
    conn.close()

    async with register_bank_handlers(Application(store=_url(db_file))) as app:
        mismatches = await verify(app, report.expected)

    assert "log: position 121 follows 119" in mismatches
    assert f"log: read_all returned {SMALL_EVENTS - 1} events, expected {SMALL_EVENTS}" in (
        mismatches
    )


async def test_verify_lists_the_first_mismatches_and_counts_the_rest(
    memory_store: Any, loop_errors: list[object]
) -> None:
    app = register_bank_handlers(Application(store=memory_store))
    expected = Expected({f"ghost-{n}": 10 for n in range(30)}, deposits=1)

    mismatches = await verify(app, expected)

    assert len(mismatches) == MAX_MISMATCHES + 1
    assert mismatches[-1].startswith("... and ")
    assert mismatches[-1].endswith(" more mismatches")


# -- the plan and the numbers --------------------------------------------------------------


def test_the_plan_is_the_same_for_the_same_seed_and_balances_add_up() -> None:
    first = make_plan(clients=4, accounts=10, deposits=5, seed=7, tag="t")
    again = make_plan(clients=4, accounts=10, deposits=5, seed=7, tag="t")
    other = make_plan(clients=4, accounts=10, deposits=5, seed=8, tag="t")

    assert first == again
    assert first.balances != other.balances
    deposits = [cmd for share in first.deposits for cmd in share]
    assert len(deposits) == 50
    for account_id, balance in first.balances.items():
        assert sum(d.amount for d in deposits if d.account_id == account_id) == balance
    assert sorted(cmd.account_id for share in first.opens for cmd in share) == sorted(
        first.balances
    )


def test_the_plan_spreads_one_accounts_deposits_over_several_clients() -> None:
    plan = make_plan(clients=8, accounts=5, deposits=20, seed=1)

    for account_id in plan.balances:
        holders = {
            client
            for client, share in enumerate(plan.deposits)
            if any(cmd.account_id == account_id for cmd in share)
        }
        assert len(holders) > 1


def test_percentiles_use_the_nearest_rank() -> None:
    samples = [float(n) for n in range(100, 0, -1)]

    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 95) == 95.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([4.0], 99) == 4.0
    assert percentile([], 50) == 0.0
