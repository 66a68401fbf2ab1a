"""Background jobs: ``await app.enqueue(job)`` puts work on the broker for a worker.

A job is a msgspec struct (subclass :class:`Job`); its status — queued, running, done,
failed — with its result or error lives in a table of the read store, so any process can
ask (``await queue.status(job_id)``) or wait for it (``await queue.wait(job_id)``). Jobs are
handled by a :class:`~obelisk.messaging.worker.MessageWorker` built by
:meth:`JobQueue.worker`: with the inbox, so a redelivered job does not run twice; with
retries and backoff; a job that fails ``max_attempts`` times is dead-lettered and marked
failed with its error.

    class SendReceipt(Job):
        account_id: str
        amount: int

    @queue.handles(SendReceipt)
    async def send(job: SendReceipt, ctx: MessageContext) -> dict[str, str]:
        return {"sent_to": job.account_id}

    job_id = await app.enqueue(SendReceipt(account_id="a", amount=5))
    status = await queue.wait(job_id, timeout=10)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Literal, TypeVar

import msgspec

from obelisk.domain.values import check_json_nesting
from obelisk.errors import BrokerError, ValidationError
from obelisk.messaging.broker import Broker
from obelisk.messaging.inbox import Inbox
from obelisk.messaging.message import Delivery, Message
from obelisk.messaging.worker import MessageContext, MessageWorker
from obelisk.projections.readstore import ReadStore

__all__ = ["Job", "JobQueue", "JobStatus"]

JOB_TYPE: Final = "obelisk-job-type"
JobState = Literal["queued", "running", "done", "failed"]
J = TypeVar("J", bound="Job")


class Job(msgspec.Struct, kw_only=True, frozen=True):
    """Base class of jobs. ``job_type`` is the name on the wire (the class name by default)."""

    job_type: ClassVar[str] = "Job"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "job_type" not in cls.__dict__:
            cls.job_type = cls.__name__


class JobStatus(msgspec.Struct, frozen=True):
    """Where a job is. ``result`` is what its handler returned (JSON-decoded)."""

    id: str
    job_type: str
    state: JobState
    attempts: int
    result: Any
    error: str | None
    enqueued_at: float
    finished_at: float | None


JobHandler = Callable[[Any, MessageContext], Awaitable[Any]]


class JobQueue:
    """Jobs on ``broker`` (topic ``jobs``) with their status in ``read_store``.

    Both must be open while the queue is used.
    """

    def __init__(self, broker: Broker, read_store: ReadStore, *, topic: str = "jobs") -> None:
        self.broker = broker
        self.read_store = read_store
        self.topic = topic
        self.table = read_store.qualified("obelisk_jobs")
        self._handlers: dict[str, tuple[type[Job], JobHandler]] = {}
        self._ready = False

    async def open(self) -> None:
        """Create the status table if missing."""
        if self._ready:
            return
        d = self.read_store.dialect
        text, real = d.column_type("text"), d.column_type("float")
        async with self.read_store.transaction() as tx:
            await tx.lock_schema_changes()
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (id {text} PRIMARY KEY, "
                f"job_type {text} NOT NULL, state {text} NOT NULL, "
                f"attempts {d.column_type('integer')} NOT NULL, result {text}, error {text}, "
                f"enqueued_at {real} NOT NULL, finished_at {real})"
            )
        self._ready = True

    # -- producing ---------------------------------------------------------------------

    async def enqueue(self, job: Job, *, key: str | None = None) -> str:
        """Queue ``job``; its id. ``key`` orders jobs: one key's jobs run one at a time.

        Raises:
            BrokerUnavailable: the job could not be published; its status says failed.
        """
        if not isinstance(job, Job):
            raise ValidationError(f"expected a Job, got {type(job).__name__}")
        try:  # before its status row: a job that cannot be sent is not left "queued"
            payload = msgspec.json.encode(job)
        except (msgspec.EncodeError, TypeError, UnicodeEncodeError, RecursionError) as exc:
            raise ValidationError(f"{job.job_type} cannot be written as JSON: {exc}") from exc
        await self.open()
        ident = uuid.uuid4().hex
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"INSERT INTO {self.table} (id, job_type, state, attempts, enqueued_at) "
                    f"VALUES (?, ?, 'queued', 0, {d.now})"
                ),
                ident,
                job.job_type,
            )
        message = Message(
            ident,
            self.topic,
            f"job.{job.job_type}",
            key or ident,
            payload,
            {JOB_TYPE: job.job_type},
        )
        try:
            await self.broker.publish([message])
        except BrokerError as exc:
            await self._finish(ident, "failed", None, f"not queued: {exc}")
            raise
        return ident

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or None for an unknown id."""
        await self.open()
        rows = await self.read_store.query(
            self.read_store.dialect.sql(
                f"SELECT id, job_type, state, attempts, result, error, enqueued_at, "
                f"finished_at FROM {self.table} WHERE id = ?"
            ),
            job_id,
        )
        if not rows:
            return None
        ident, job_type, state, attempts, result, error, enqueued, finished = rows[0]
        decoded = None if result is None else msgspec.json.decode(result)
        return JobStatus(ident, job_type, state, int(attempts), decoded, error, enqueued, finished)

    async def wait(self, job_id: str, *, timeout: float) -> JobStatus:  # noqa: ASYNC109
        """The job's status once done or failed.

        Raises:
            TimeoutError: still queued or running after ``timeout`` seconds.
            LookupError: no such job.
        """
        delay = 0.005
        async with asyncio.timeout(timeout):
            while True:
                status = await self.status(job_id)
                if status is None:
                    raise LookupError(f"no job {job_id!r}")
                if status.state in ("done", "failed"):
                    return status
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    # -- consuming ---------------------------------------------------------------------

    def handles(self, job_type: type[J]) -> Callable[[JobHandler], JobHandler]:
        """Register ``async def handler(job, ctx) -> result`` for ``job_type``."""
        if not (isinstance(job_type, type) and issubclass(job_type, Job)):
            raise ValidationError(f"{job_type!r} is not a Job class")

        def register(fn: JobHandler) -> JobHandler:
            if job_type.job_type in self._handlers:
                raise ValidationError(f"{job_type.job_type} already has a handler")
            self._handlers[job_type.job_type] = (job_type, fn)
            return fn

        return register

    def worker(self, *, group: str = "jobs", **options: Any) -> MessageWorker:
        """A worker running this queue's jobs (options as for MessageWorker)."""
        handlers = dict(self._handlers)
        decoders = {name: msgspec.json.Decoder(cls) for name, (cls, _) in handlers.items()}

        async def run_job(ctx: MessageContext) -> None:
            message = ctx.message
            name = message.headers.get(JOB_TYPE)
            entry = handlers.get(name or "")
            if entry is None:
                raise ValidationError(f"no handler for job type {name!r}")
            try:
                # msgspec recurses once per level: a payload nested past the limit would
                # end in a RecursionError (checked on bytes, cheap for any real job).
                check_json_nesting(message.payload, f"a {name} job")
                job = decoders[name or ""].decode(message.payload)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise ValidationError(f"malformed {name} job: {exc}") from exc
            result = await entry[1](job, ctx)
            # Done in the inbox's transaction: the status and "handled" commit together.
            assert ctx.tx is not None
            d = self.read_store.dialect
            await ctx.tx.execute(
                d.sql(
                    f"UPDATE {self.table} SET state = 'done', result = ?, error = NULL, "
                    f"finished_at = {d.now} WHERE id = ?"
                ),
                msgspec.json.encode(result).decode(),
                message.id,
            )

        async def failed(delivery: Delivery, error: str) -> None:
            await self._finish(delivery.message.id, "failed", None, error)

        async def starting(delivery: Delivery) -> None:
            await self._running(delivery.message.id)

        options.setdefault("inbox", Inbox(self.read_store))
        return MessageWorker(
            self.broker,
            run_job,
            group=group,
            topic=self.topic,
            on_dead_letter=failed,
            before_handle=starting,
            **options,
        )

    async def _running(self, job_id: str) -> None:
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"UPDATE {self.table} SET state = 'running', attempts = attempts + 1 "
                    f"WHERE id = ? AND state IN ('queued', 'running')"
                ),
                job_id,
            )

    async def _finish(self, job_id: str, state: JobState, result: Any, error: str | None) -> None:
        d = self.read_store.dialect
        async with self.read_store.transaction() as tx:
            await tx.execute(
                d.sql(
                    f"UPDATE {self.table} SET state = ?, result = ?, error = ?, "
                    f"finished_at = {d.now} WHERE id = ?"
                ),
                state,
                None if result is None else msgspec.json.encode(result).decode(),
                error,
                job_id,
            )
