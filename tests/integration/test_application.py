"""The application layer end to end, on the memory store and on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from obelisk.application import Application, Command, RetryPolicy, UnitOfWork
from obelisk.demo.bank import (
    Account,
    AccountOpened,
    Deposit,
    MoneyDeposited,
    OpenAccount,
    register_bank_handlers,
)
from obelisk.domain import command
from obelisk.errors import (
    AggregateNotFound,
    CommandRejected,
    ConcurrencyError,
    DomainError,
    ObeliskError,
    ValidationError,
)
from obelisk.store import ANY

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)


class FlakyAccount(Account):
    """An account with a command that fails half-way, after recording events."""

    @command
    def deposit_twice_then_fail(self, amount: int) -> None:
        self.deposit(amount)
        self.deposit(amount)
        raise DomainError("the second thoughts came too late")


class FlakyDeposit(Command):
    command_type = "integration_app.FlakyDeposit"
    account_id: str
    amount: int


class SneakyDeposit(Command):
    """Handled by a handler that races itself on its first run (see _sneaky_handler)."""

    command_type = "integration_app.SneakyDeposit"
    account_id: str
    amount: int


class CloseAccount(Command):
    """Never registered."""

    command_type = "integration_app.CloseAccount"
    account_id: str


class Inspect(Command):
    """A command whose handler only reads."""

    command_type = "integration_app.Inspect"
    account_id: str


def _url(kind: str, tmp_path: Path, name: str = "app.db") -> str:
    # NORMAL keeps a hundred one-at-a-time commits quick; durability is not under test here.
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path / name}?synchronous=NORMAL"


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def app(kind: str, tmp_path: Path, loop_errors: list[object]) -> AsyncIterator[Application]:
    async with register_bank_handlers(Application(_url(kind, tmp_path))) as application:
        yield application


async def _open(app: Application, account_id: str, *deposits: int) -> None:
    await app.handle(OpenAccount(account_id=account_id, owner=f"owner of {account_id}"))
    for amount in deposits:
        await app.handle(Deposit(account_id=account_id, amount=amount))


def _sneaky_handler(app: Application, runs: list[int], *, every_run: bool = False) -> Any:
    """A deposit handler that, on its first run, appends behind the unit of work's back."""

    async def handle(uow: UnitOfWork, cmd: SneakyDeposit) -> None:
        runs.append(len(runs) + 1)
        account = await uow.get(Account, cmd.account_id)
        if every_run or len(runs) == 1:
            await app.store.append(cmd.account_id, [MoneyDeposited(amount=1000)], ANY)
        account.deposit(cmd.amount)

    return handle


# -- the happy path ----------------------------------------------------------------------------


async def test_open_then_deposit_returns_increasing_positions(app: Application) -> None:
    opened = await app.handle(OpenAccount(account_id="acc-1", owner="ann"))
    first = await app.handle(Deposit(account_id="acc-1", amount=10))
    second = await app.handle(Deposit(account_id="acc-1", amount=5))
    assert opened is not None and first is not None and second is not None
    assert opened < first < second
    assert second == await app.store.last_position()
    account = await app.get(Account, "acc-1")
    assert (account.owner, account.balance, account.version) == ("ann", 15, 3)


async def test_the_stream_records_the_aggregate_type(app: Application) -> None:
    await _open(app, "acc-1")
    [info] = await app.store.list_streams()
    assert (info.stream_id, info.stream_type, info.version) == ("acc-1", "Account", 1)


async def test_a_handler_that_records_nothing_returns_none_and_writes_nothing(
    app: Application,
) -> None:
    await _open(app, "acc-1", 3)
    seen: list[int] = []

    @app.handler(Inspect)
    async def inspect(uow: UnitOfWork, cmd: Inspect) -> None:
        seen.append((await uow.get(Account, cmd.account_id)).balance)

    before = await app.store.last_position()
    assert await app.handle(Inspect(account_id="acc-1")) is None
    assert seen == [3]
    assert await app.store.last_position() == before


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        Deposit(account_id="acc-1", amount="x"),  # type: ignore[arg-type]
        Deposit(account_id="acc-1", amount=0),
        Deposit(account_id="acc-1", amount=-5),
        Deposit(account_id="acc-1", amount=1.5),  # type: ignore[arg-type]
        Deposit(account_id=7, amount=5),  # type: ignore[arg-type]
        OpenAccount(account_id="acc-2", owner=None),  # type: ignore[arg-type]
    ],
    ids=["amount-str", "amount-zero", "amount-negative", "amount-float", "id-int", "owner-none"],
)
async def test_a_malformed_command_raises_validation_error_and_writes_nothing(
    app: Application, bad: Command
) -> None:
    await _open(app, "acc-1", 4)
    before = await app.store.last_position()
    with pytest.raises(ValidationError, match=type(bad).__name__):
        await app.handle(bad)
    assert await app.store.last_position() == before
    assert (await app.get(Account, "acc-1")).balance == 4
    assert await app.store.stream_version("acc-2") == 0


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("Deposit", b"{not json"),
        ("Deposit", b""),
        ("Deposit", b'{"account_id": "acc-1", "amount": "ten"}'),
        ("Deposit", b'{"account_id": "acc-1", "amount": 0}'),
        ("Deposit", b'{"account_id": "acc-1"}'),
        ("Deposit", b"[1, 2]"),
        ("Withdraw", b'{"account_id": "acc-1", "amount": 1}'),
        ("integration_app.CloseAccount", b'{"account_id": "acc-1"}'),
    ],
    ids=["bad-json", "empty", "wrong-type", "constraint", "missing-field", "array", "unknown",
         "unregistered"],
)
async def test_handle_json_with_a_bad_payload_or_name_raises_validation_error(
    app: Application, name: str, payload: bytes
) -> None:
    await _open(app, "acc-1")
    before = await app.store.last_position()
    with pytest.raises(ValidationError):
        await app.handle_json(name, payload)
    assert await app.store.last_position() == before


async def test_handle_json_with_a_good_payload_handles_the_command(app: Application) -> None:
    await app.handle_json("OpenAccount", b'{"account_id": "acc-1", "owner": "bo"}')
    position = await app.handle_json(
        "Deposit", b'{"account_id": "acc-1", "amount": 12}', correlation_id="json-1"
    )
    assert position == await app.store.last_position()
    assert (await app.get(Account, "acc-1")).balance == 12
    assert (await app.store.read_stream("acc-1"))[-1].correlation_id == "json-1"


async def test_an_unregistered_command_raises_command_rejected(app: Application) -> None:
    with pytest.raises(CommandRejected, match="CloseAccount"):
        await app.handle(CloseAccount(account_id="acc-1"))
    assert await app.store.last_position() == 0


async def test_a_second_handler_for_one_command_is_refused(app: Application) -> None:
    async def another(uow: UnitOfWork, cmd: Deposit) -> None:
        raise AssertionError("never runs")

    with pytest.raises(ValueError, match="already has a handler"):
        app.commands.register(Deposit, another)


# -- units of work ---------------------------------------------------------------------------


async def test_a_unit_of_work_commits_two_aggregates_atomically(app: Application) -> None:
    await _open(app, "acc-a", 100)
    await _open(app, "acc-b", 50)
    before = await app.store.last_position()

    async with app.unit_of_work() as uow:
        a = await uow.get(Account, "acc-a")
        b = await uow.get(Account, "acc-b")
        a.deposit(1)
        b.deposit(2)
        b.deposit(3)

    assert uow.position == before + 3
    assert await app.store.last_position() == before + 3
    assert (await app.get(Account, "acc-a")).balance == 101
    assert (await app.get(Account, "acc-b")).balance == 55
    assert await app.store.stream_version("acc-a") == 3
    assert await app.store.stream_version("acc-b") == 4


async def test_a_unit_of_work_with_a_stale_aggregate_writes_neither(app: Application) -> None:
    await _open(app, "acc-a", 100)
    await _open(app, "acc-b", 50)
    before = await app.store.last_position()

    with pytest.raises(ConcurrencyError) as info:
        async with app.unit_of_work() as uow:
            a = await uow.get(Account, "acc-a")
            b = await uow.get(Account, "acc-b")
            a.deposit(1)
            b.deposit(2)
            # Another writer appends to b after this unit loaded it.
            await app.store.append("acc-b", [MoneyDeposited(amount=7)], ANY)

    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("acc-b", 2, 3)
    # Only the other writer's event landed: a's deposit went down with b's.
    assert await app.store.last_position() == before + 1
    assert await app.store.stream_version("acc-a") == 2
    assert (await app.get(Account, "acc-a")).balance == 100
    assert (await app.get(Account, "acc-b")).balance == 57


async def test_an_exception_inside_the_unit_of_work_discards_everything(
    app: Application,
) -> None:
    await _open(app, "acc-a", 10)
    before = await app.store.last_position()

    with pytest.raises(RuntimeError, match="boom"):
        async with app.unit_of_work() as uow:
            (await uow.get(Account, "acc-a")).deposit(5)
            uow.add(Account.open("acc-new", "nia"))
            raise RuntimeError("boom")

    assert await app.store.last_position() == before
    assert (await app.get(Account, "acc-a")).balance == 10
    with pytest.raises(AggregateNotFound):
        await app.get(Account, "acc-new")
    # The unit released its lock on acc-a: the next command on it goes through.
    await app.handle(Deposit(account_id="acc-a", amount=1))
    assert (await app.get(Account, "acc-a")).balance == 11


async def test_looking_up_a_missing_aggregate_twice_in_one_unit_does_not_deadlock(
    app: Application,
) -> None:
    async with app.unit_of_work() as uow:
        assert await uow.get_or_none(Account, "ghost") is None
        again = asyncio.ensure_future(uow.get_or_none(Account, "ghost"))
        for _ in range(20):  # scheduling, not timing: the lookup needs no real waiting
            await asyncio.sleep(0)
        done = again.done()
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
        assert done, "the second lookup is waiting for a lock its own unit holds"
        assert again.result() is None


async def test_an_ended_unit_of_work_refuses_further_use(app: Application) -> None:
    await _open(app, "acc-a")
    async with app.unit_of_work() as uow:
        await uow.get(Account, "acc-a")
    with pytest.raises(ObeliskError, match="ended"):
        await uow.get(Account, "acc-a")
    with pytest.raises(ObeliskError, match="ended"):
        uow.add(Account.open("acc-z", "zed"))


async def test_a_broken_aggregate_is_not_committed(app: Application) -> None:
    await _open(app, "acc-a", 10)
    before = await app.store.last_position()

    @app.handler(FlakyDeposit)
    async def flaky(uow: UnitOfWork, cmd: FlakyDeposit) -> None:
        account = await uow.get(FlakyAccount, cmd.account_id)
        # A handler that swallows the failure still cannot commit the half-changed state.
        with contextlib.suppress(DomainError):
            account.deposit_twice_then_fail(cmd.amount)
        assert account.is_broken

    with pytest.raises(CommandRejected, match="half-changed"):
        await app.handle(FlakyDeposit(account_id="acc-a", amount=5))
    assert await app.store.last_position() == before
    assert (await app.get(Account, "acc-a")).balance == 10


async def test_a_command_on_a_missing_account_raises_aggregate_not_found(
    app: Application,
) -> None:
    with pytest.raises(AggregateNotFound) as info:
        await app.handle(Deposit(account_id="nobody", amount=5))
    assert (info.value.aggregate_type, info.value.aggregate_id) == ("Account", "nobody")
    assert await app.store.last_position() == 0
    with pytest.raises(AggregateNotFound):
        await app.get(Account, "nobody")
    # The failed unit let go of the id: opening and depositing now works.
    await _open(app, "nobody", 5)
    assert (await app.get(Account, "nobody")).balance == 5


async def test_opening_an_existing_account_again_raises_a_concurrency_error(
    app: Application,
) -> None:
    await _open(app, "acc-a", 9)
    with pytest.raises(ConcurrencyError):
        await app.handle(OpenAccount(account_id="acc-a", owner="imposter"))
    account = await app.get(Account, "acc-a")
    assert (account.owner, account.balance) == ("owner of acc-a", 9)


# -- concurrency and retries ---------------------------------------------------------------------


async def test_concurrent_deposits_to_one_account_all_succeed_with_an_exact_balance(
    app: Application,
) -> None:
    await _open(app, "acc-hot")
    positions = await asyncio.gather(
        *(app.handle(Deposit(account_id="acc-hot", amount=n)) for n in range(1, 101))
    )
    assert len(set(positions)) == 100
    account = await app.get(Account, "acc-hot")
    assert account.balance == sum(range(1, 101))
    assert account.version == 101
    assert await app.store.last_position() == 101


async def test_concurrent_deposits_across_accounts_all_land(app: Application) -> None:
    ids = [f"acc-{n}" for n in range(5)]
    for account_id in ids:
        await _open(app, account_id)
    await asyncio.gather(
        *(app.handle(Deposit(account_id=account_id, amount=2)) for account_id in ids * 10)
    )
    for account_id in ids:
        assert (await app.get(Account, account_id)).balance == 20


async def test_a_retry_policy_reruns_the_handler_after_a_concurrency_error(
    app: Application,
) -> None:
    await _open(app, "acc-r", 1)
    runs: list[int] = []
    app.commands.register(SneakyDeposit, _sneaky_handler(app, runs), retry=NO_WAIT)

    position = await app.handle(SneakyDeposit(account_id="acc-r", amount=5))

    assert runs == [1, 2]
    account = await app.get(Account, "acc-r")
    # The second run started from the state that includes the other writer's 1000.
    assert (account.balance, account.version) == (1 + 1000 + 5, 4)
    assert position == await app.store.last_position()


async def test_without_a_retry_policy_the_caller_gets_the_concurrency_error(
    app: Application,
) -> None:
    await _open(app, "acc-r", 1)
    runs: list[int] = []
    app.commands.register(SneakyDeposit, _sneaky_handler(app, runs))

    with pytest.raises(ConcurrencyError):
        await app.handle(SneakyDeposit(account_id="acc-r", amount=5))

    assert runs == [1]
    account = await app.get(Account, "acc-r")
    assert (account.balance, account.version) == (1 + 1000, 3)


async def test_the_applications_default_retry_policy_applies_to_every_handler(
    kind: str, tmp_path: Path, loop_errors: list[object]
) -> None:
    async with Application(_url(kind, tmp_path, "retry.db"), retry=NO_WAIT) as app:
        register_bank_handlers(app)
        await _open(app, "acc-r")
        runs: list[int] = []
        app.commands.register(SneakyDeposit, _sneaky_handler(app, runs))
        await app.handle(SneakyDeposit(account_id="acc-r", amount=5))
        assert runs == [1, 2]
        assert (await app.get(Account, "acc-r")).balance == 1005


async def test_retries_stop_after_the_policys_attempts(app: Application) -> None:
    await _open(app, "acc-r")
    runs: list[int] = []
    app.commands.register(SneakyDeposit, _sneaky_handler(app, runs, every_run=True), retry=NO_WAIT)

    with pytest.raises(ConcurrencyError):
        await app.handle(SneakyDeposit(account_id="acc-r", amount=5))

    assert runs == [1, 2, 3]
    assert (await app.get(Account, "acc-r")).balance == 3000


# -- envelopes and lifecycle ------------------------------------------------------------------


async def test_the_correlation_id_passed_to_handle_is_stored_in_the_envelope(
    app: Application,
) -> None:
    await app.handle(OpenAccount(account_id="acc-c", owner="cat"))
    await app.handle(Deposit(account_id="acc-c", amount=3), correlation_id="request-42")
    opened, deposited = await app.store.read_stream("acc-c")
    assert opened.event == AccountOpened(owner="cat")
    assert opened.correlation_id is None
    assert deposited.event == MoneyDeposited(amount=3)
    assert deposited.correlation_id == "request-42"
    [from_all] = await app.store.read_all(after=opened.position)
    assert from_all.correlation_id == "request-42"


async def test_a_unit_of_work_stores_its_correlation_and_causation_ids(app: Application) -> None:
    async with app.unit_of_work(correlation_id="corr-7", causation_id="cause-7") as uow:
        uow.add(Account.open("acc-u", "uma"))
    [stored] = await app.store.read_stream("acc-u")
    assert (stored.correlation_id, stored.causation_id) == ("corr-7", "cause-7")


async def test_the_store_is_unavailable_before_the_application_opens(
    kind: str, tmp_path: Path, loop_errors: list[object]
) -> None:
    app = Application(_url(kind, tmp_path))
    with pytest.raises(RuntimeError, match="not open"):
        _ = app.store
    async with app:
        assert await app.store.last_position() == 0
    with pytest.raises(RuntimeError, match="not open"):
        _ = app.store


async def test_data_written_through_sqlite_survives_a_restart(
    tmp_path: Path, loop_errors: list[object]
) -> None:
    url = _url("sqlite", tmp_path)
    async with register_bank_handlers(Application(url)) as app:
        await _open(app, "acc-p", 7, 8)
    async with Application(url) as app:
        account = await app.get(Account, "acc-p")
        assert (account.balance, account.version) == (15, 3)
