"""StreamLoader: whole-stream loads asked for together share one query."""

from __future__ import annotations

import asyncio

import pytest

from obelisk.store._pg_loader import StreamLoader

ROWS = {"a": [("k", b"1"), ("k", b"2")], "b": [("k", b"3")], "c": []}


class FakeDatabase:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    async def one(self, stream_id: str) -> list[tuple[str, bytes]]:
        self.calls.append(("one", stream_id))
        if self.fail:
            raise self.fail
        return ROWS[stream_id]

    async def many(self, stream_ids: list[str]) -> list[tuple[str, str, bytes]]:
        self.calls.append(("many", sorted(stream_ids)))
        if self.fail:
            raise self.fail
        return [(s, key, data) for s in sorted(stream_ids) for key, data in ROWS[s]]


async def test_loads_asked_for_in_one_iteration_share_one_query() -> None:
    db = FakeDatabase()
    loader = StreamLoader(db.one, db.many)
    a, b, c, a_again = await asyncio.gather(
        loader.load("a"), loader.load("b"), loader.load("c"), loader.load("a")
    )
    assert (a, b, c, a_again) == (ROWS["a"], ROWS["b"], [], ROWS["a"])
    assert db.calls == [("many", ["a", "b", "c"])]
    assert (loader.queries, loader.loads) == (1, 3)


async def test_a_lone_load_uses_the_single_stream_query() -> None:
    db = FakeDatabase()
    loader = StreamLoader(db.one, db.many)
    assert await loader.load("b") == ROWS["b"]
    assert await loader.load("a") == ROWS["a"]
    assert db.calls == [("one", "b"), ("one", "a")]


async def test_a_failed_query_fails_every_load_of_its_batch() -> None:
    db = FakeDatabase(fail=ConnectionError("server gone"))
    loader = StreamLoader(db.one, db.many)
    results = await asyncio.gather(loader.load("a"), loader.load("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await loader.load("a")


async def test_a_cancelled_load_does_not_disturb_the_others() -> None:
    db = FakeDatabase()
    loader = StreamLoader(db.one, db.many)
    doomed = loader.load("a")
    kept = loader.load("b")
    doomed.cancel()
    assert await kept == ROWS["b"]
