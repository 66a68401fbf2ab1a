"""Hostile input at the application's entry points raises obelisk errors, nothing else.

Arbitrary text (lone surrogates, NUL, a megabyte), integers beyond 64 bits, NaN and
infinities, lists nested past any limit and values of the wrong type are fed to
``Application.get``/``handle``/``handle_json`` and a unit of work's ``get``/``add``/commit
(as aggregate ids, command names, JSON bodies, command fields, versions, times and ids)
on the memory store, on SQLite and on PostgreSQL. Whatever is refused must be refused
with an :class:`~obelisk.errors.ObeliskError`: never a TypeError, UnicodeEncodeError,
RecursionError or a driver's own exception. (A handler's own exceptions are its
business: these handlers raise none.)

Each test runs its hypothesis examples on one event loop (``asyncio.Runner``) around one
open application, so a store is opened once per test, not once per example.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.application import Application, Command, UnitOfWork
from obelisk.application.commands import encode_command
from obelisk.demo.bank import Account, Deposit, OpenAccount, register_bank_handlers
from obelisk.domain import Aggregate, Event, command
from obelisk.errors import ObeliskError, ValidationError

EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Deep:
    """Stands for lists nested ``depth`` deep (hypothesis prints its examples recursively:
    the real value would end its printer in a RecursionError). :func:`_real` builds it."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def _real(value: Any) -> Any:
    if not isinstance(value, Deep):
        return value
    nested: list[Any] = []
    for _ in range(value.depth - 1):
        nested = [nested]
    return nested


class Noted(Event):
    event_type = "hostile.Noted"
    data: Any


class Notebook(Aggregate):
    """An aggregate whose events carry whatever they are given (``Any``)."""

    notes: int = 0

    @command
    def note(self, data: Any) -> None:
        self.record(Noted(data=data))

    def apply_noted(self, event: Noted) -> None:
        self.notes += 1


class Note(Command):
    command_type = "hostile.Note"
    notebook_id: str
    data: Any


async def _note(uow: UnitOfWork, cmd: Note) -> None:
    book = await uow.get_or_none(Notebook, cmd.notebook_id)
    if book is None:
        uow.add(Notebook.create(cmd.notebook_id, Noted(data=cmd.data)))
    else:
        book.note(cmd.data)


# -- hostile values --------------------------------------------------------------------

SURROGATE = "\ud800"
MEGABYTE = "x" * 1_000_000
SPECIAL: list[Any] = [
    SURROGATE, f"a{SURROGATE}b", "\udfff", "\x00", "a\x00b", "", " ", "\u2028", "x" * 201,
    MEGABYTE, 2**70, -(2**70), 2**64, 2**63, -(2**63) - 1, math.nan, math.inf, -math.inf,
    None, True, b"bytes", bytearray(b"x"), 1.5, [], {}, ("t",), {"a": 1}, object(),
    Deep(128), Deep(129), Deep(1000), Deep(5000), Account,
]  # fmt: skip

texts = st.text(st.characters(exclude_categories=[]), max_size=40)
values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(SPECIAL),
    texts,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | texts,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=8,
    ),
)
# Text that is a valid id half of the time: the store must get far enough to matter.
ids = st.one_of(values, st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))


def _json(value: Any) -> bytes:
    """``value`` as JSON text as a hostile client could write it: big integers as their
    digits, NaN and infinities as the words, lone surrogates as ``\\ud800`` escapes."""
    if isinstance(value, Deep):
        return b"[" * value.depth + b"]" * value.depth
    if isinstance(value, bool) or value is None:
        return msgspec.json.encode(value)
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()  # nan, inf: not JSON, as a client might send anyway
    if isinstance(value, str):
        return b'"' + value.encode("ascii", "backslashreplace").replace(b"\\x", b"\\u00") + b'"'
    if isinstance(value, list):
        return b"[" + b",".join(_json(v) for v in value) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(_json(str(k)) + b":" + _json(v) for k, v in value.items()) + b"}"
    return b'"' + repr(value).encode("ascii", "backslashreplace").replace(b'"', b"") + b'"'


def _body(fields: dict[str, Any]) -> bytes:
    return b"{" + b",".join(_json(k) + b":" + _json(v) for k, v in fields.items()) + b"}"


payloads = st.one_of(
    values,  # not bytes at all, mostly
    st.binary(max_size=200),
    st.builds(lambda v: _body({"account_id": "acct-1", "amount": v}), values),
    st.builds(lambda v: _body({"account_id": v, "owner": "o"}), values),
    st.builds(lambda v: _body({"notebook_id": "book-1", "data": v}), values),
    st.builds(lambda v: _body({"account_id": "acct-1", "amount": 5, "extra": v}), values),
    st.builds(lambda v: _json(v).decode("ascii"), values),  # str payloads
    st.just('{"account_id": "a", "owner": "' + SURROGATE + '"}'),
)
names = st.one_of(st.sampled_from(["OpenAccount", "Deposit", "hostile.Note"]), values)


# -- the application under test -------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}?synchronous=NORMAL"
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        schema = f"t_{uuid.uuid4().hex}"
        yield f"{dsn}?schema={schema}"
        asyncio.run(_drop_schema(dsn, schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


Run = Callable[[Callable[[], Awaitable[object]]], None]


@contextmanager
def application(store_url: str) -> Iterator[tuple[Application, Run]]:
    """An open application with the bank's and the notebook's handlers, an account
    ``acct-1`` and a notebook ``book-1``; and ``run``, which runs one call and lets only
    obelisk errors through (any other exception fails the example)."""
    app = register_bank_handlers(Application(store_url))
    app.commands.register(Note, _note)
    with asyncio.Runner() as runner:
        runner.run(app.open())
        try:
            runner.run(app.handle(OpenAccount(account_id="acct-1", owner="o")))
            runner.run(app.handle(Note(notebook_id="book-1", data=[1])))

            def run(call: Callable[[], Awaitable[object]]) -> None:
                async def guarded() -> None:
                    try:
                        await call()
                    except ObeliskError:
                        pass

                runner.run(guarded())

            yield app, run
        finally:
            runner.run(app.close())


# -- the tests ---------------------------------------------------------------------------


def test_hostile_ids_versions_and_times_to_get_raise_only_obelisk_errors(store_url: str) -> None:
    with application(store_url) as (app, run):

        @EXAMPLES
        @given(ident=ids, version=values, as_of=values)
        def check(ident: Any, version: Any, as_of: Any) -> None:
            ident, version, as_of = _real(ident), _real(version), _real(as_of)
            run(lambda: app.get(Account, ident))
            run(lambda: app.get(Notebook, ident, version=1))
            run(lambda: app.get(Account, "acct-1", version=version))
            run(lambda: app.get(Account, "acct-1", as_of=as_of))
            run(lambda: app.get(Account, "acct-1", version=1, as_of=datetime.now()))

        check()


def test_hostile_ids_in_a_unit_of_work_raise_only_obelisk_errors(store_url: str) -> None:
    with application(store_url) as (app, run):

        async def in_unit(ident: Any, meta: Any) -> None:
            async with app.unit_of_work() as uow:
                await uow.get_or_none(Account, ident)
            async with app.unit_of_work() as uow:
                await uow.get(Account, ident)
            async with app.unit_of_work() as uow:
                uow.add(ident)
            async with app.unit_of_work() as uow:
                uow.add(Account.open(ident, "owner"))
            async with app.unit_of_work(correlation_id=meta, causation_id=meta) as uow:
                (await uow.get(Account, "acct-1")).deposit(1)

        @EXAMPLES
        @given(ident=ids, meta=values)
        def check(ident: Any, meta: Any) -> None:
            ident, meta = _real(ident), _real(meta)
            run(lambda: in_unit(ident, meta))

        check()


def test_hostile_json_commands_raise_only_obelisk_errors(store_url: str) -> None:
    with application(store_url) as (app, run):

        @EXAMPLES
        @given(name=names, payload=payloads)
        def check(name: Any, payload: Any) -> None:
            name, payload = _real(name), _real(payload)
            run(lambda: app.handle_json(name, payload))
            for known in ("OpenAccount", "Deposit", "hostile.Note"):
                run(lambda known=known: app.handle_json(known, payload))  # type: ignore[misc]

        check()


def test_hostile_command_fields_and_keys_raise_only_obelisk_errors(store_url: str) -> None:
    with application(store_url) as (app, run):

        @EXAMPLES
        @given(value=values, ident=ids, key=values)
        def check(value: Any, ident: Any, key: Any) -> None:
            value, ident, key = _real(value), _real(ident), _real(key)
            run(lambda: app.handle(OpenAccount(account_id=ident, owner=value)))
            run(lambda: app.handle(Deposit(account_id="acct-1", amount=value)))
            run(lambda: app.handle(Deposit(account_id=ident, amount=5)))
            run(lambda: app.handle(Note(notebook_id="book-1", data=value)))
            run(lambda: app.handle(Note(notebook_id=ident, data=[value])))
            run(lambda: app.handle(value))
            run(lambda: app.handle(Deposit(account_id="acct-1", amount=1), idempotency_key=key))
            run(lambda: app.handle(Deposit(account_id="acct-1", amount=1), correlation_id=key,
                                   causation_id=value))  # fmt: skip

        check()


# -- the concrete cases ------------------------------------------------------------------


def _deep_body(depth: int) -> bytes:
    return b'{"account_id": "acct-2", "owner": "o", "x": ' + b"[" * depth + b"]" * depth + b"}"


async def test_handle_json_nested_1000_deep_raises_validation_error_and_writes_nothing() -> None:
    async with register_bank_handlers(Application("memory://")) as app:
        # 2 KB: msgspec recursed into the unknown field until a RecursionError.
        with pytest.raises(ValidationError, match="nested deeper than 128 levels"):
            await app.handle_json("OpenAccount", _deep_body(1000))
        with pytest.raises(ValidationError, match="nested deeper than 128 levels"):
            await app.handle_json("OpenAccount", _deep_body(1000).decode())
        assert await app.store.last_position() == 0

        await app.handle_json("OpenAccount", _deep_body(127))  # the object is level 128
        assert (await app.get(Account, "acct-2")).owner == "o"


async def test_a_command_built_in_code_nested_past_the_limit_raises_validation_error() -> None:
    app = Application("memory://")
    app.commands.register(Note, _note)
    async with app:
        with pytest.raises(ValidationError, match="nested deeper than 128 levels"):
            await app.handle(Note(notebook_id="book-1", data=_real(Deep(1000))))
        await app.handle(Note(notebook_id="book-1", data=_real(Deep(127))))
        assert await app.store.last_position() == 1


@pytest.mark.parametrize(
    "data", [math.nan, SURROGATE, Deep(1000), ("a", "tuple")], ids=["nan", "surrogate",
                                                                   "deep", "tuple"]
)  # fmt: skip
def test_a_command_that_would_not_read_back_as_json_cannot_be_kept_for_later(data: Any) -> None:
    # What a process manager schedules is written as JSON and decoded when due: refused
    # now, not given up by the scheduler later.
    with pytest.raises(ValidationError):
        encode_command(Note(notebook_id="book-1", data=_real(data)))
    assert encode_command(Note(notebook_id="b", data=[1, "x"])) == (
        b'{"notebook_id":"b","data":[1,"x"]}'
    )
