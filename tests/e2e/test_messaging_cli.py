"""`obelisk relay`, `obelisk worker` and `obelisk dlq` against a real Redis, as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from obelisk.application import Application
from obelisk.demo.bank import Deposit, OpenAccount, register_bank_handlers
from obelisk.messaging.redis import RedisBroker
from obelisk.servers.redis import ThrowawayRedis

OBELISK = str(Path(sys.executable).parent / "obelisk")
WAIT = 60.0

CONSUMERS = """
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.messaging.consumers import Consumers
from obelisk.messaging.worker import Backoff

consumers = Consumers("{broker}", read_store="sqlite:///{read}")


@consumers.on(AccountOpened, group="ledger", max_attempts=2,
              backoff=Backoff(base=0.01, maximum=0.02))
async def opened(event, ctx):
    await ctx.tx.execute("INSERT INTO opened (account_id) VALUES (?)", ctx.message.key)


@consumers.on(MoneyDeposited, group="ledger", max_attempts=2,
              backoff=Backoff(base=0.01, maximum=0.02))
async def deposited(event, ctx):
    raise RuntimeError("the ledger is closed for deposits")
"""


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with ThrowawayRedis() as server:
        yield server.url


def until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def broker_call(url: str, method: str, *args: object) -> object:
    async def call() -> object:
        async with RedisBroker(url) as broker:
            return await getattr(broker, method)(*args)

    return asyncio.run(call())


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    return out


def test_relay_worker_and_dead_letters_from_the_command_line(
    tmp_path: Path, redis_url: str
) -> None:
    events, read = tmp_path / "events.db", tmp_path / "read.db"

    async def write() -> None:
        app = register_bank_handlers(Application(f"sqlite:///{events}"))
        async with app:
            for i in range(3):
                await app.handle(OpenAccount(account_id=f"a{i}", owner="ada"))
            await app.handle(Deposit(account_id="a0", amount=5))

    asyncio.run(write())
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    relay = subprocess.Popen(
        [OBELISK, "relay", "--store", f"sqlite:///{events}", "--read", f"sqlite:///{read}",
         "--broker", redis_url, "--import", "obelisk.demo.bank"],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        until(lambda: broker_call(redis_url, "length", "events") == 4, "4 events relayed")
    finally:
        stop(relay)

    (tmp_path / "service.py").write_text(
        textwrap.dedent(CONSUMERS).format(broker=redis_url, read=read)
    )
    import sqlite3

    with sqlite3.connect(read) as conn:
        conn.execute("CREATE TABLE opened (account_id TEXT)")
    worker = subprocess.Popen(
        [OBELISK, "worker", "service:consumers"],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        until(lambda: broker_call(redis_url, "length", "dlq.ledger") == 1, "a dead letter")
        until(lambda: broker_call(redis_url, "pending", "events", "ledger") == 0, "all acked")
    finally:
        stop(worker)
    with sqlite3.connect(read) as conn:
        opened = sorted(r[0] for r in conn.execute("SELECT account_id FROM opened"))
    assert opened == ["a0", "a1", "a2"]

    listed = subprocess.run(
        [OBELISK, "dlq", "list", "--broker", redis_url, "--group", "ledger", "--json"],
        env=env, text=True, capture_output=True, timeout=WAIT,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)
    assert letter["key"] == "a0" and letter["attempts"] == "2"
    assert "the ledger is closed for deposits" in letter["error"]

    replayed = subprocess.run(
        [OBELISK, "dlq", "replay", "--broker", redis_url, "--group", "ledger"],
        env=env, text=True, capture_output=True, timeout=WAIT,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letters of ledger" in replayed.stdout
    assert broker_call(redis_url, "length", "events") == 5  # back on its topic


def test_a_bad_broker_url_or_target_is_refused_clearly(tmp_path: Path) -> None:
    bad = subprocess.run(
        [OBELISK, "dlq", "list", "--broker", "kafka://x", "--group", "g"],
        text=True, capture_output=True, timeout=WAIT,
    )  # fmt: skip
    assert bad.returncode == 2 and "unsupported broker URL" in bad.stderr
    missing = subprocess.run(
        [OBELISK, "worker", "no_such_module:consumers"], cwd=tmp_path,
        text=True, capture_output=True, timeout=WAIT,
    )  # fmt: skip
    assert missing.returncode == 2 and "no_such_module" in missing.stderr
