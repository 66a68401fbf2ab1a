"""Appends waiting for a group commit, shared by the SQL adapters' writers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from obelisk.store.base import PreparedAppend
from obelisk.store.records import AppendResult

__all__ = ["WriteJob", "fail", "on_settled", "settle"]


class WriteJob(msgspec.Struct):
    """One atomic append (one or more streams) waiting for its batch to commit."""

    parts: list[PreparedAppend]
    future: asyncio.Future[list[AppendResult]]
    results: list[AppendResult] | None = None
    error: BaseException | None = None
    on_settled: list[Callable[[], None]] | None = None
    # What the caller awaits when it is not ``future`` (an append run in the caller's task).
    key: object = None


def fail(jobs: list[WriteJob], error: BaseException) -> None:
    """Mark every job of a batch that could not commit."""
    for job in jobs:
        job.results = None
        job.error = error


def settle(jobs: list[WriteJob]) -> None:
    """Resolve each job's future with its results or error, then run its callbacks."""
    # A caller whose task was cancelled has a done future: its append still committed
    # (or failed) and there is nobody left to tell.
    for job in jobs:
        if not job.future.done():
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.results)  # type: ignore[arg-type]
        if job.on_settled is not None:
            for callback in job.on_settled:
                try:
                    callback()
                except Exception as exc:  # one bad callback must not strand the others
                    job.future.get_loop().call_exception_handler(
                        {"message": "append settle callback failed", "exception": exc}
                    )


def on_settled(jobs: list[WriteJob], future: object, callback: Callable[[], None]) -> bool:
    """Call ``callback`` when the job of ``future`` settles; False if it is not pending."""
    for job in jobs:
        if job.future is future or job.key is future:
            if job.on_settled is None:
                job.on_settled = []
            job.on_settled.append(callback)
            return True
    return False
