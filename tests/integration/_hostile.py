"""Hostile values, and the read-side entry points they are fed to (one argument at a time,
the others valid): see test_hostile_read_side.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import strategies as st

from obelisk.caching import QueryCache
from obelisk.caching.redis_cache import RedisQueryCache
from obelisk.projections import Index, ReadStore, Table, fetch_page, keyset_sql
from obelisk.projections.pagination import decode_cursor, encode_cursor
from obelisk.projections.readstore import Claim, DeadLetter
from obelisk.projections.tables import ChangeSet
from obelisk.testing.hostile import nested


class _Opaque:
    """An object no driver knows."""


# Values a request or a handler could pass by mistake or on purpose.
NASTY: list[Any] = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "nul\x00inside",
    "x" * 1_000_000,
    "",
    2**70,
    -(2**70),
    2**63,
    -(2**63) - 1,
    10**400,
    float("nan"),
    float("inf"),
    float("-inf"),
    nested(5001),
    [],
    {},
    {"a": [1, {"b": None}]},
    None,
    True,
    b"\x00\xff",
    ("a", 1),
    _Opaque(),
    1.5,
    -1,
    0,
]

_SURROGATED = st.tuples(st.text(max_size=8), st.sampled_from(["\ud800", "\udfff"])).map(
    lambda parts: parts[0] + parts[1]
)

HOSTILE = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=20),
    _SURROGATED,
    st.integers(),
    st.floats(),
    st.binary(max_size=20),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.none(),
    st.booleans(),
)

ROWS = Table(
    "hostile_rows",
    {
        "id": "text",
        "n": "integer",
        "x": "float",
        "flag": "boolean",
        "raw": "bytes",
        "doc": "json",
        "label": "text",
    },
    key="id",
    indexes=[Index("label")],
)
SPARE = Table("hostile_spare", {"id": "text"}, key="id")  # for calls that drop tables
NAME = "hostile"  # the projection registered before the examples run

ReadCall = Callable[[ReadStore, Any], Awaitable[object]]


def _claim(**fields: Any) -> Claim:
    values: dict[str, Any] = {
        "name": NAME,
        "generation": 1,
        "partition": 0,
        "owner": "w",
        "epoch": 1,
        "position": 0,
    }
    values.update(fields)
    return Claim(**values)


def _letter(**fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "projection": NAME,
        "generation": 1,
        "position": 1,
        "stream_id": "s",
        "version": 1,
        "event_type": "T",
        "error": "boom",
        "recorded_at": 0.0,
    }
    values.update(fields)
    return DeadLetter(**values)


def _in_tx(call: Callable[[Any, ReadStore, Any], Awaitable[object]]) -> ReadCall:
    async def run(store: ReadStore, value: Any) -> None:
        async with store.transaction() as tx:
            await call(tx, store, value)

    return run


def _flush(column: str) -> ReadCall:
    async def run(tx: Any, store: ReadStore, value: Any) -> None:
        changes = ChangeSet(ROWS)
        changes.upsert({"id": "k", column: value} if column != "id" else {"id": value})
        await tx.flush([(changes, store.physical(ROWS, 1))])

    return _in_tx(run)


async def _add(tx: Any, store: ReadStore, value: Any) -> None:
    changes = ChangeSet(ROWS)
    changes.add("k", {"n": 1})
    changes.add("k", {"n": value})
    await tx.flush([(changes, store.physical(ROWS, 1))])


def _where(store: ReadStore) -> str:
    return store.dialect.sql(f"SELECT id FROM {store.qualified(ROWS.name)} WHERE label = ?")


def _insert(store: ReadStore) -> str:
    return store.dialect.sql(
        f"INSERT INTO {store.physical(ROWS, 1)} (id, n) VALUES (?, ?) "
        "ON CONFLICT (id) DO UPDATE SET n = excluded.n"
    )


def _page(**options: Any) -> ReadCall:
    async def run(store: ReadStore, value: Any) -> None:
        arguments: dict[str, Any] = {"order_by": ("label",)}
        arguments.update({k: (value if v is ... else v) for k, v in options.items()})
        await fetch_page(store, ROWS, **arguments)

    return run


READ_STORE_CALLS: dict[str, ReadCall] = {
    "state": lambda s, v: s.state(v),
    "register name": lambda s, v: s.register(v, 1, 1, [ROWS]),
    "register version": lambda s, v: s.register(f"r{id(v)}", v, 1, [ROWS]),
    "register partitions": lambda s, v: s.register(f"p{id(v)}", 1, v, [ROWS]),
    "register tables": lambda s, v: s.register(f"t{id(v)}", 1, 1, v),
    "begin_rebuild name": lambda s, v: s.begin_rebuild(v, [SPARE]),
    "begin_rebuild tables": lambda s, v: s.begin_rebuild(NAME, v),
    "create_indexes tables": lambda s, v: s.create_indexes(v, 1),
    "create_indexes generation": lambda s, v: s.create_indexes([SPARE], v),
    "drop_generation name": lambda s, v: s.drop_generation(v, [SPARE], 7),
    "drop_generation tables": lambda s, v: s.drop_generation("gone", v, 7),
    "drop_generation generation": lambda s, v: s.drop_generation("gone", [SPARE], v),
    "set_paused name": lambda s, v: s.set_paused(v, False),
    "set_paused paused": lambda s, v: s.set_paused(NAME, v),
    "claim name": lambda s, v: s.claim(v, 1, 0, "w", 5.0),
    "claim generation": lambda s, v: s.claim(NAME, v, 0, "w", 5.0),
    "claim partition": lambda s, v: s.claim(NAME, 1, v, "w", 5.0),
    "claim owner": lambda s, v: s.claim(NAME, 1, 0, v, 5.0),
    "claim lease_seconds": lambda s, v: s.claim(NAME, 1, 0, "w", v),
    "release claim": lambda s, v: s.release(v),
    "release claim name": lambda s, v: s.release(_claim(name=v)),
    "release claim epoch": lambda s, v: s.release(_claim(epoch=v)),
    "holds claim": lambda s, v: s.holds(v),
    "holds claim partition": lambda s, v: s.holds(_claim(partition=v)),
    "checkpoints name": lambda s, v: s.checkpoints(v),
    "live_position name": lambda s, v: s.live_position(v),
    "dead_letters name": lambda s, v: s.dead_letters(v),
    "dead_letters limit": lambda s, v: s.dead_letters(NAME, limit=v),
    "heartbeat name": lambda s, v: s.heartbeat(v, "w", 5.0),
    "heartbeat worker": lambda s, v: s.heartbeat(NAME, v, 5.0),
    "heartbeat lease_seconds": lambda s, v: s.heartbeat(NAME, "w", v),
    "leave name": lambda s, v: s.leave(v, "w"),
    "leave worker": lambda s, v: s.leave(NAME, v),
    "physical generation": lambda s, v: _later(lambda: s.physical(ROWS, v)),
    "query argument": lambda s, v: s.query(_where(s), v),
    "record_dead_letter letter": _in_tx(lambda tx, s, v: s.record_dead_letter(tx, v)),
    "record_dead_letter position": _in_tx(
        lambda tx, s, v: s.record_dead_letter(tx, _letter(position=v))
    ),
    "record_dead_letter stream": _in_tx(
        lambda tx, s, v: s.record_dead_letter(tx, _letter(stream_id=v))
    ),
    "record_dead_letter error": _in_tx(lambda tx, s, v: s.record_dead_letter(tx, _letter(error=v))),
    "advance position": _in_tx(lambda tx, s, v: s.advance(tx, _claim(), v, 5.0, None)),
    "advance lease_seconds": _in_tx(lambda tx, s, v: s.advance(tx, _claim(), 1, v, None)),
    "advance last_event_at": _in_tx(lambda tx, s, v: s.advance(tx, _claim(), 1, 5.0, v)),
    "advance claim": _in_tx(lambda tx, s, v: s.advance(tx, v, 1, 5.0, None)),
    "switch name": _in_tx(lambda tx, s, v: s.switch(tx, v, 1, [SPARE], 9, 0)),
    "switch version": _in_tx(lambda tx, s, v: s.switch(tx, "gone", v, [SPARE], 9, 0)),
    "tx execute": _in_tx(lambda tx, s, v: tx.execute(_insert(s), "k", v)),
    "tx executemany": _in_tx(lambda tx, s, v: tx.executemany(_insert(s), [("k", v)])),
    "tx executemany rows": _in_tx(lambda tx, s, v: tx.executemany(_insert(s), v)),
    "tx fetch": _in_tx(lambda tx, s, v: tx.fetch(_where(s), v)),
    "tx fetchval": _in_tx(lambda tx, s, v: tx.fetchval(_where(s), v)),
    "tx flush changes": _in_tx(lambda tx, s, v: tx.flush(v)),
    "flush key": _flush("id"),
    "flush integer": _flush("n"),
    "flush float": _flush("x"),
    "flush boolean": _flush("flag"),
    "flush bytes": _flush("raw"),
    "flush json": _flush("doc"),
    "flush text": _flush("label"),
    "flush added": _in_tx(_add),
    "flush deleted key": _in_tx(
        lambda tx, s, v: _delete_and_flush(tx, s, v),
    ),
    "page order_by": _page(order_by=...),
    "page where": _page(where=...),
    "page where value": lambda s, v: fetch_page(s, ROWS, order_by=("label",), where={"id": v}),
    "page limit": _page(limit=...),
    "page after": _page(after=...),
    "page direction": _page(direction=...),
    "page columns": _page(columns=...),
    "page table": lambda s, v: fetch_page(s, v, order_by=("id",)),
    "keyset_sql order_by": lambda s, v: _later(lambda: keyset_sql(s, ROWS, order_by=v)),
    "decode_cursor": lambda s, v: _later(lambda: decode_cursor(v, 1)),
    "encode_cursor": lambda s, v: _later(lambda: encode_cursor(v)),
}


async def _later(call: Callable[[], object]) -> object:
    """``call()`` when awaited: a synchronous entry point raises inside ``outcome``."""
    return call()


async def _delete_and_flush(tx: Any, store: ReadStore, value: Any) -> None:
    changes = ChangeSet(ROWS)
    changes.delete(value)
    await tx.flush([(changes, store.physical(ROWS, 1))])


CacheCall = Callable[[QueryCache, Any], Awaitable[object]]


async def _load() -> Any:
    return {"rows": [1, 2]}


def _returning(value: Any) -> Callable[[], Awaitable[Any]]:
    async def load() -> Any:
        return value

    return load


CACHE_CALLS: dict[str, CacheCall] = {
    "get key": lambda c, v: c.get(v, _load),
    "get load": lambda c, v: c.get("k-load", v),
    "get loaded value": lambda c, v: c.get(f"k-value-{id(v)}", _returning(v)),
    "get tags": lambda c, v: c.get("k-tags", _load, tags=v),
    "get tag": lambda c, v: c.get("k-tag", _load, tags=[v]),
    "get type": lambda c, v: c.get(f"k-type-{id(v)}", _load, type=v),
    "peek key": lambda c, v: _later(lambda: c.peek(v)),
    "invalidate tag": lambda c, v: _later(lambda: c.invalidate(v)),
    "invalidate broadcast": lambda c, v: _later(lambda: c.invalidate("t", broadcast=v)),
    "version tag": lambda c, v: _later(lambda: c.version(v)),
    "versions tags": lambda c, v: _later(lambda: c.versions(v)),
    "versions tag": lambda c, v: _later(lambda: c.versions([v])),
    "flush after invalidate": lambda c, v: _invalidate_and_flush(c, v),
    "new max_entries": lambda c, v: _later(lambda: QueryCache(max_entries=v)),
    "new ttl": lambda c, v: _later(lambda: QueryCache(ttl=v)),
}


async def _invalidate_and_flush(cache: QueryCache, value: Any) -> None:
    try:
        cache.invalidate(value)
    finally:
        await cache.flush()


LayerCall = Callable[[RedisQueryCache, Any], Awaitable[object]]

LAYER_CALLS: dict[str, LayerCall] = {
    "lookup key": lambda r, v: r.lookup(v, ()),
    "lookup tags": lambda r, v: r.lookup("k", v),
    "lookup tag": lambda r, v: r.lookup("k", (v,)),
    "store key": lambda r, v: r.store(v, (), b"\x90", ()),
    "store tags": lambda r, v: r.store("k", v, b"\x90", (0,)),
    "store tag": lambda r, v: r.store("k", (v,), b"\x90", (0,)),
    "store data": lambda r, v: r.store("k", (), v, ()),
    "store versions": lambda r, v: r.store("k", ("t",), b"\x90", v),
    "store version": lambda r, v: r.store("k", ("t",), b"\x90", (v,)),
    "invalidate tags": lambda r, v: r.invalidate(v),
    "invalidate tag": lambda r, v: r.invalidate((v,)),
    "versions tags": lambda r, v: r.versions(v),
    "versions tag": lambda r, v: r.versions((v,)),
    "encode": lambda r, v: _later(lambda: r.encode(v)),
    "decode data": lambda r, v: _later(lambda: r.decode(v)),
    "decode type": lambda r, v: _later(lambda: r.decode(b"\x90", v)),
    "value_key": lambda r, v: _later(lambda: r.value_key(v)),
    "new prefix": lambda r, v: _later(lambda: RedisQueryCache(r.url, prefix=v)),
    "new ttl": lambda r, v: _later(lambda: RedisQueryCache(r.url, ttl=v)),
    "new timeout": lambda r, v: _later(lambda: RedisQueryCache(r.url, timeout=v)),
    "new retry_after": lambda r, v: _later(lambda: RedisQueryCache(r.url, retry_after=v)),
    "new max_connections": lambda r, v: _later(lambda: RedisQueryCache(r.url, max_connections=v)),
}
