"""``linger``: a runner following the log waits a moment after a wake-up, so the commits of
a busy moment make one batch (one read-store transaction) instead of one each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from obelisk.errors import ValidationError
from obelisk.projections import ProjectionRunner
from obelisk.projections._sqlite_read import SQLiteReadStore
from obelisk.store import SQLiteEventStore

from ._projection_helpers import reach, running, write_ledgers
from ._projection_worker import Ledger, LedgerCredited

COMMITS = 20


async def _batches_for_spaced_commits(tmp_path: Path, linger: float) -> int:
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        SQLiteReadStore(tmp_path / "read.db") as read_store,
    ):
        head = await write_ledgers(store, 3, 1)
        runner = ProjectionRunner(Ledger(), store, read_store, poll_interval=5.0, linger=linger)
        async with running(runner) as task:
            await reach(runner, task, head)
            before = runner.batches
            last = head
            for n in range(COMMITS):  # separate commits, 2 ms apart: 40 ms in all
                last = (await store.append(f"l-{n % 3}", [LedgerCredited(amount=1)])).last_position
                await asyncio.sleep(0.002)
            await reach(runner, task, last)
            return runner.batches - before


async def test_with_linger_commits_close_together_are_applied_in_few_batches(
    tmp_path: Path,
) -> None:
    assert await _batches_for_spaced_commits(tmp_path, linger=0.2) <= 2


async def test_without_linger_each_commit_is_its_own_batch_or_nearly(tmp_path: Path) -> None:
    # The control: the same commits make many batches when the runner reads at once.
    assert await _batches_for_spaced_commits(tmp_path, linger=0.0) >= COMMITS // 2


def test_a_linger_near_the_lease_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="linger"):
        ProjectionRunner(Ledger(), SQLiteEventStore(tmp_path / "e.db"),
                         SQLiteReadStore(tmp_path / "r.db"), lease_seconds=3.0,
                         linger=1.5)  # fmt: skip
