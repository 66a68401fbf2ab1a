"""``obelisk demo``: the flash sale over real HTTP end to end (the service a subprocess, the
buyers in the command's process), its verdict — and proof that the verdict can fail:
:func:`examples.flashsale.verify.check_sale` run on a sale whose ledgers were tampered with.
Also ``obelisk serve`` refusing several processes where they cannot share their state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import examples.flashsale.demo as flashsale_demo
from examples.flashsale.domain import OpenSection, RequestPayment, Reserve
from examples.flashsale.service import FlashSale, Settings
from examples.flashsale.verify import SaleCheck, check_sale, settled
from obelisk.cli import app as cli_app

SMALL = ["--clients", "16", "--sections", "2", "--seats", "40", "--hold", "0.5"]
ENDPOINTS = (
    "GET /sales/{id}/availability",
    "POST /reservations",
    "POST /reservations/{id}/payment",
    "POST /sections",
)
RUN_TIMEOUT = 120  # seconds: a run takes a few; a hung one fails instead of stalling CI


def _demo(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["demo", *args])


def _assert_accounted_for(report: dict[str, Any]) -> None:
    """A verified run: every seat sold once, every reservation closed and mailed about."""
    assert report["verified"] is True, report["problems"]
    assert report["problems"] == []
    assert report["oversold"] == 0
    assert report["stock"] > 0
    assert report["seats_sold"] == report["stock"]
    assert report["reservations"] > 0
    assert report["confirmed"] + report["expired"] == report["reservations"]
    assert report["emails"] == report["confirmed"] + report["expired"]
    assert report["charges"] - report["refunds"] == report["confirmed"]


# -- the CLI on SQLite ---------------------------------------------------------------------


def test_the_demo_prints_one_json_object_and_every_seat_is_accounted_for() -> None:
    result = _demo(*SMALL, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # one object: nothing else on stdout
    _assert_accounted_for(report)
    assert report["stock"] == 2 * 40
    assert report["clients"] == 16
    assert report["store"].startswith("sqlite:///")
    assert report["broker"] == "memory://"
    assert set(report["endpoints"]) == set(ENDPOINTS)
    assert report["statuses"]["POST /sections 201"] == 2
    assert report["requests"] == sum(e["requests"] for e in report["endpoints"].values())
    assert 0.0 <= report["cache_hit_ratio"] <= 1.0


def test_the_table_names_the_endpoints_the_figures_and_the_verdict() -> None:
    result = _demo(*SMALL)

    assert result.exit_code == 0, result.output
    for text in (*ENDPOINTS, "oversold", "cache hit ratio", "seats sold / stock", "verified"):
        assert text in result.stdout, text
    assert "80 / 80" in result.stdout
    assert "FAILED" not in result.stdout


async def _check_with_a_problem(*args: Any) -> SaleCheck:
    """The real check, then one problem it did not find (as if it had)."""
    check = await check_sale(*args)
    check.problem("section X oversold by 1 seats (planted by the test)")
    return check


def test_a_failed_verification_exits_1_with_verified_false_and_the_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flashsale_demo, "check_sale", _check_with_a_problem)

    result = _demo(*SMALL, "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert report["problems"] == ["section X oversold by 1 seats (planted by the test)"]


def test_a_failed_verification_shows_failed_and_the_problem_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flashsale_demo, "check_sale", _check_with_a_problem)

    result = _demo(*SMALL)

    assert result.exit_code == 1, result.output
    assert "verification FAILED" in result.stdout
    assert "planted by the test" in result.stdout
    assert "every seat accounted for" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "--clients must be >= 1"),
        (["--hold", "0"], "--hold must be > 0"),
        (["--seats", "0"], "--seats must be >= 1"),
        (["--sections", "-1"], "--sections must be >= 1"),
    ],
)
def test_bad_options_exit_2_and_say_why(args: list[str], message: str) -> None:
    result = _demo(*args, "--json")

    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


# -- obelisk serve: several processes need shared state ------------------------------------

PG = "postgresql://u@127.0.0.1:5432/db"
REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--store", "sqlite:///sale.db", "--broker", REDIS, "--redis", REDIS],
         "an SQLite file has one writer process"),
        (["--broker", REDIS, "--redis", REDIS], "an SQLite file has one writer process"),
        (["--store", PG, "--broker", "memory://", "--redis", REDIS],
         "the memory broker lives in one process"),
        (["--store", PG, "--redis", REDIS], "the memory broker lives in one process"),
        (["--store", PG, "--broker", REDIS],
         "--redis redis://... to invalidate each other's query caches"),
    ],
    ids=["sqlite-store", "default-store", "memory-broker", "default-broker", "no-redis"],
)  # fmt: skip
def test_serve_refuses_two_workers_without_shared_state(
    monkeypatch: pytest.MonkeyPatch, options: list[str], says: str
) -> None:
    for name in ("OBELISK_STORE", "OBELISK_READ_STORE", "OBELISK_BROKER", "OBELISK_REDIS"):
        monkeypatch.delenv(name, raising=False)

    result = CliRunner().invoke(
        cli_app, ["serve", "examples.flashsale:app", "--workers", "2", *options]
    )

    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert result.stdout == ""


# -- check_sale on a sale run in-process, then tampered with --------------------------------

SALE = "t1"
SECTION = f"{SALE}-s0"
PAID, ALSO_PAID, UNPAID = f"{SALE}-r1", f"{SALE}-r2", f"{SALE}-r3"


@dataclass(frozen=True)
class FinishedSale:
    folder: Path

    @property
    def store(self) -> str:
        return f"sqlite:///{self.folder / 'events.db'}"

    @property
    def read(self) -> str:
        return f"sqlite:///{self.folder / 'read.db'}"

    async def check(self) -> SaleCheck:
        return await check_sale(self.store, self.read, SALE, [SECTION], [PAID, ALSO_PAID, UNPAID])

    def tamper(self, sql: str, *params: Any) -> None:
        """Change the simulated providers' ledgers behind the service's back."""
        conn = sqlite3.connect(self.folder / "read.db")
        try:
            with conn:
                assert conn.execute(sql, params).rowcount == 1
        finally:
            conn.close()


async def _run_small_sale(folder: Path) -> None:
    """Six seats: two reservations paid, one left to expire; returns once settled."""
    options: dict[str, Any] = {
        "hold_seconds": 0.3,
        "payment_latency": 0.001,
        "payment_failure_rate": 0.0,
        "decline_rate": 0.0,
        "mail_latency": 0.0,
        "mail_failure_rate": 0.0,
        "seed": 1,
        "tune_gc": False,  # the test session's garbage collector is not the service's
    }
    settings = Settings(store=f"sqlite:///{folder / 'events.db'}", **options)
    sale = FlashSale(settings)
    await sale.start()
    try:
        await sale.app.handle(OpenSection(section_id=SECTION, sale_id=SALE, name="A", stock=6,
                                          price_cents=1200))  # fmt: skip
        for rid in (PAID, ALSO_PAID, UNPAID):
            await sale.app.handle(Reserve(reservation_id=rid, section_id=SECTION,
                                          customer_id="c1", seats=2))  # fmt: skip
        for rid in (PAID, ALSO_PAID):
            await sale.app.handle(RequestPayment(reservation_id=rid))
        async with asyncio.timeout(20):
            while not await settled(settings.read_store_url(), SALE, 3):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await sale.stop()


@pytest.fixture(scope="module")
def finished_sale_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished-sale")
    asyncio.run(_run_small_sale(folder))
    return folder


@pytest.fixture
def finished(finished_sale_files: Path, tmp_path: Path) -> FinishedSale:
    """A copy of the settled sale's databases for one test to tamper with."""
    folder = tmp_path / "sale"
    shutil.copytree(finished_sale_files, folder)
    return FinishedSale(folder)


async def test_check_sale_verifies_the_untouched_sale(finished: FinishedSale) -> None:
    check = await finished.check()

    assert check.problems == []
    assert check.verified
    assert (check.stock, check.seats_sold, check.seats_held, check.oversold) == (6, 4, 0, 0)
    assert (check.confirmed, check.expired) == (2, 1)
    assert (check.charges, check.refunds, check.emails) == (2, 0, 3)


async def test_check_sale_reports_a_paid_reservation_whose_charge_was_refunded(
    finished: FinishedSale,
) -> None:
    finished.tamper("UPDATE sim_charges SET state = 'refunded' WHERE reservation_id = ?", PAID)

    check = await finished.check()

    assert not check.verified
    assert len(check.problems) == 1
    assert check.problems[0].startswith(f"paid reservation {PAID} has no standing charge")
    assert check.refunds == 1


async def test_check_sale_reports_a_paid_reservation_without_a_charge(
    finished: FinishedSale,
) -> None:
    finished.tamper("DELETE FROM sim_charges WHERE reservation_id = ?", ALSO_PAID)

    check = await finished.check()

    assert not check.verified
    assert check.problems == [f"paid reservation {ALSO_PAID} has no standing charge (None)"]


async def test_check_sale_reports_a_charge_of_the_wrong_amount(finished: FinishedSale) -> None:
    finished.tamper("UPDATE sim_charges SET amount_cents = 1 WHERE reservation_id = ?", PAID)

    check = await finished.check()

    assert not check.verified
    assert check.problems == [f"reservation {PAID} was charged 1, costs 2400"]


async def test_check_sale_reports_a_standing_charge_of_an_unpaid_reservation(
    finished: FinishedSale,
) -> None:
    finished.tamper(
        "INSERT INTO sim_charges (reservation_id, charge_id, amount_cents, state) "
        "VALUES (?, 'ch_planted', 2400, 'charged')",
        UNPAID,
    )

    check = await finished.check()

    assert not check.verified
    assert check.problems == [f"reservation {UNPAID} is not paid but its charge stands"]


async def test_check_sale_reports_a_missing_email(finished: FinishedSale) -> None:
    finished.tamper(
        "DELETE FROM sim_emails WHERE reservation_id = ? AND kind = 'confirmation'", PAID
    )

    check = await finished.check()

    assert not check.verified
    assert check.emails == 2
    assert check.problems == ["e-mails: 1 confirmations for 2 paid, 1 notices for 1 expired"]


async def test_check_sale_reports_an_email_sent_twice(finished: FinishedSale) -> None:
    finished.tamper(
        "INSERT INTO sim_emails (message_id, recipient, kind, reservation_id) "
        "VALUES ('planted', 'c1@example.com', 'expiry', ?)",
        UNPAID,
    )

    check = await finished.check()

    assert not check.verified
    assert any("2 notices for 1 expired" in p for p in check.problems), check.problems
    assert any(f"more than one e-mail, e.g. {UNPAID}" in p for p in check.problems)


async def test_check_sale_reports_a_charge_id_other_than_the_one_the_reservation_records(
    finished: FinishedSale,
) -> None:
    finished.tamper("UPDATE sim_charges SET charge_id = 'ch_other' WHERE reservation_id = ?", PAID)

    check = await finished.check()

    assert not check.verified


# -- server stores and brokers ---------------------------------------------------------------


async def _demo_process(*args: str) -> dict[str, Any]:
    """``obelisk demo --json ...`` run by the installed console script; its report."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "obelisk"), "demo", "--json",
        "--clients", "16", "--sections", "2", "--seats", "30", "--hold", "0.5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()[-3000:]
    report: dict[str, Any] = json.loads(out)
    return report


async def test_the_demo_on_postgresql_with_a_redis_broker_is_verified(
    postgres_dsn: str, pg_schema: str, redis_url: str
) -> None:
    store = f"{postgres_dsn}?schema={pg_schema}"

    report = await _demo_process("--store", store, "--broker", redis_url)

    _assert_accounted_for(report)
    assert (report["store"], report["broker"]) == (store, redis_url)
    assert report["stock"] == 60


async def test_the_demo_on_postgresql_with_a_nats_broker_is_verified(
    postgres_dsn: str, pg_schema: str, nats_url: str
) -> None:
    store = f"{postgres_dsn}?schema={pg_schema}"

    report = await _demo_process("--store", store, "--broker", nats_url)

    _assert_accounted_for(report)
    assert (report["store"], report["broker"]) == (store, nats_url)
    assert report["stock"] == 60
