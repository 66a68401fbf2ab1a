"""Background jobs: queued by the application, run by a worker, their status queryable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from obelisk import Application
from obelisk.errors import ValidationError
from obelisk.messaging.jobs import Job, JobQueue
from obelisk.messaging.memory import MemoryBroker
from obelisk.messaging.message import Message
from obelisk.messaging.worker import Backoff, MessageContext, MessageWorker
from obelisk.projections import read_store_from_url

WAIT = 30.0


class Resize(Job):
    image: str
    width: int


class Flaky(Job):
    job_type = "test_jobs.Flaky"
    fail_times: int


@asynccontextmanager
async def queue_and_worker(tmp_path: Path) -> AsyncIterator[tuple[JobQueue, dict[str, int]]]:
    broker = MemoryBroker()
    runs: dict[str, int] = {}
    async with read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        queue = JobQueue(broker, read_store)

        @queue.handles(Resize)
        async def resize(job: Resize, ctx: MessageContext) -> dict[str, object]:
            runs[ctx.message.id] = runs.get(ctx.message.id, 0) + 1
            return {"image": job.image, "width": job.width}

        @queue.handles(Flaky)
        async def flaky(job: Flaky, ctx: MessageContext) -> str:
            runs[ctx.message.id] = runs.get(ctx.message.id, 0) + 1
            if runs[ctx.message.id] <= job.fail_times:
                raise RuntimeError(f"boom {runs[ctx.message.id]}")
            return "ok"

        worker = queue.worker(
            max_attempts=3, backoff=Backoff(base=0.001, maximum=0.01), fetch_wait=0.05
        )
        task = asyncio.create_task(worker.run())
        try:
            yield queue, runs
        finally:
            worker.stop()
            await task


async def test_an_enqueued_job_runs_and_its_result_is_queryable(tmp_path: Path) -> None:
    async with queue_and_worker(tmp_path) as (queue, runs):
        app = Application("memory://", jobs=queue)
        async with app:
            job_id = await app.enqueue(Resize(image="cat.png", width=64))
        status = await queue.wait(job_id, timeout=WAIT)
        assert (status.state, status.result, status.error) == (
            "done",
            {"image": "cat.png", "width": 64},
            None,
        )
        assert status.attempts == 1 and status.finished_at is not None
        assert runs == {job_id: 1}


async def test_a_failing_job_is_retried_then_succeeds_or_fails_with_its_error(
    tmp_path: Path,
) -> None:
    async with queue_and_worker(tmp_path) as (queue, _runs):
        recovers = await queue.enqueue(Flaky(fail_times=2))
        gives_up = await queue.enqueue(Flaky(fail_times=5))
        ok = await queue.wait(recovers, timeout=WAIT)
        assert (ok.state, ok.result, ok.attempts) == ("done", "ok", 3)
        failed = await queue.wait(gives_up, timeout=WAIT)
        assert failed.state == "failed"
        assert failed.error is not None and "RuntimeError: boom 3" in failed.error
        # Dead-lettered with the error, for `obelisk dlq` to list and replay.
        letters = await queue.broker.read("dlq.jobs")
        assert [entry.message.id for entry in letters] == [gives_up]


async def test_a_redelivered_job_does_not_run_twice(tmp_path: Path) -> None:
    async with queue_and_worker(tmp_path) as (queue, runs):
        job_id = await queue.enqueue(Resize(image="dog.png", width=32))
        await queue.wait(job_id, timeout=WAIT)
        # The same message again, as a broker would after a lost acknowledgement.
        (entry,) = await queue.broker.read("jobs")
        await queue.broker.publish([entry.message])
        again = await queue.enqueue(Resize(image="fish.png", width=8))  # a marker after it
        await queue.wait(again, timeout=WAIT)
        assert runs[job_id] == 1


async def test_a_malformed_job_fails_with_a_clear_reason(tmp_path: Path) -> None:
    async with queue_and_worker(tmp_path) as (queue, runs):
        job_id = await queue.enqueue(Resize(image="x", width=1))
        await queue.wait(job_id, timeout=WAIT)
        bad = Message("bad-1", "jobs", "job.Resize", "bad-1", b'{"image": 3}',
                      {"obelisk-job-type": "Resize"})  # fmt: skip
        await queue.broker.publish([bad])
        unknown = Message("bad-2", "jobs", "job.Nope", "bad-2", b"{}",
                          {"obelisk-job-type": "Nope"})  # fmt: skip
        await queue.broker.publish([unknown])
        async with asyncio.timeout(WAIT):
            while len(await queue.broker.read("dlq.jobs")) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        errors = {e.message.id: e.message.headers["obelisk-error"] for e in
                  await queue.broker.read("dlq.jobs")}  # fmt: skip
        assert "malformed Resize job" in errors["bad-1"]
        assert "no handler for job type 'Nope'" in errors["bad-2"]
        assert "bad-1" not in runs


async def test_status_of_an_unknown_job_is_none_and_enqueue_needs_a_queue(
    tmp_path: Path,
) -> None:
    async with queue_and_worker(tmp_path) as (queue, _runs):
        assert await queue.status("nope") is None
        with pytest.raises(LookupError):
            await queue.wait("nope", timeout=1)
        with pytest.raises(ValidationError):
            await queue.enqueue("not a job")  # type: ignore[arg-type]
    app = Application("memory://")
    with pytest.raises(RuntimeError, match="no job queue"):
        await app.enqueue(Resize(image="x", width=1))


def test_a_job_worker_is_a_message_worker_on_the_jobs_topic(tmp_path: Path) -> None:
    queue = JobQueue(MemoryBroker(), read_store_from_url(f"sqlite:///{tmp_path / 'r.db'}"))
    worker = queue.worker(group="thumbnails")
    assert isinstance(worker, MessageWorker)
    assert (worker.topic, worker.group, worker.inbox is not None) == ("jobs", "thumbnails", True)


async def test_a_handler_opening_its_own_sqlite_transaction_fails_clearly_not_forever(
    tmp_path: Path,
) -> None:
    """On SQLite the read store has one connection: a job handler that enqueues another job
    (a transaction of its own inside the inbox's) is told so, instead of waiting forever."""
    broker = MemoryBroker()
    async with read_store_from_url(f"sqlite:///{tmp_path / 'read.db'}") as read_store:
        queue = JobQueue(broker, read_store)

        @queue.handles(Resize)
        async def chain(job: Resize, ctx: MessageContext) -> None:
            await queue.enqueue(Flaky(fail_times=0))

        worker = queue.worker(max_attempts=1, fetch_wait=0.05)
        task = asyncio.create_task(worker.run())
        try:
            job_id = await queue.enqueue(Resize(image="a", width=1))
            status = await queue.wait(job_id, timeout=WAIT)
        finally:
            worker.stop()
            await task
    assert status.state == "failed"
    assert status.error is not None and "already open in this task" in status.error


async def test_a_job_nested_past_the_limit_is_dead_lettered_as_malformed(tmp_path: Path) -> None:
    async with queue_and_worker(tmp_path) as (queue, runs):
        await queue.open()  # its status table
        # msgspec would recurse once per level, into the unknown field too: a RecursionError
        # before the check, reported as a job failure of no clear cause.
        payload = b'{"image": "x", "width": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
        deep = Message("deep-1", "jobs", "job.Resize", "deep-1", payload,
                       {"obelisk-job-type": "Resize"})  # fmt: skip
        await queue.broker.publish([deep])
        async with asyncio.timeout(WAIT):
            while not await queue.broker.read("dlq.jobs"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        (letter,) = await queue.broker.read("dlq.jobs")
        error = letter.message.headers["obelisk-error"]
        assert "ValidationError: a Resize job is nested deeper than 128 levels" in error
        assert "deep-1" not in runs


async def test_a_job_that_cannot_be_written_as_json_is_refused_and_leaves_no_status(
    tmp_path: Path,
) -> None:
    async with queue_and_worker(tmp_path) as (queue, _runs):
        await queue.open()
        with pytest.raises(ValidationError, match="cannot be written as JSON"):
            await queue.enqueue(Resize(image="\ud800", width=1))
        # Before the check, its status row was written first and stayed "queued" forever.
        assert await queue.read_store.query(f"SELECT COUNT(*) FROM {queue.table}") == [(0,)]
