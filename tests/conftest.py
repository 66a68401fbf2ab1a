"""Shared fixtures: fail loudly on leaked tasks and unhandled loop exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from obelisk.store import MemoryEventStore, SQLiteEventStore


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, object]]]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled event-loop exceptions: {errors}"


@pytest.fixture
async def sqlite_store(
    tmp_path: Path, loop_errors: list[object]
) -> AsyncIterator[SQLiteEventStore]:
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        yield store


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryEventStore]:
    async with MemoryEventStore() as store:
        yield store
