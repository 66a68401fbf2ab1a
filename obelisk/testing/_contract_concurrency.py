"""Contract tests with many tasks writing at once, and the model-based state machine."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from hypothesis import settings

from obelisk.errors import ConcurrencyError
from obelisk.store.base import EventStore
from obelisk.store.records import NO_STREAM, AppendResult
from obelisk.testing._contract_appends import deposits
from obelisk.testing._contract_base import ContractBase, asyncio_test
from obelisk.testing._contract_idempotency import new_ids
from obelisk.testing._events import ContractDeposited
from obelisk.testing.store_state_machine import DEFAULT_SETTINGS, run_store_state_machine

__all__ = ["ConcurrencyContract"]

_MAX_ATTEMPTS = 500  # far above what 50 writers need; only stops a livelocked store


class ConcurrencyContract(ContractBase):
    """Concurrent writers keep versions gap-free and positions unique.

    Positions are also gap-free when ``contiguous_positions`` is set.
    """

    state_machine_settings: ClassVar[settings] = DEFAULT_SETTINGS
    """Override to run the state machine longer (a soak job) or shorter."""

    @asyncio_test
    async def test_concurrent_writers_to_one_stream_never_skip_or_repeat_a_version(
        self,
    ) -> None:
        writers = 50
        conflicts = 0

        async def write_once(store: EventStore, amount: int) -> AppendResult | None:
            nonlocal conflicts
            for _ in range(_MAX_ATTEMPTS):
                version = await store.stream_version("hot")
                # Yield between the read and the write, as a command handler does while it
                # decides: every writer then races with a version others are also holding.
                await asyncio.sleep(0)
                try:
                    return await store.append("hot", deposits(amount), version)
                except ConcurrencyError:
                    conflicts += 1
            return None

        async with self.open_store() as store:
            results = await asyncio.gather(*(write_once(store, n) for n in range(1, writers + 1)))
            successes = [r for r in results if r is not None]
            assert conflicts > 0, "the writers never raced: the test proves nothing"
            assert len(successes) == writers
            assert await store.stream_version("hot") == len(successes)
            assert sorted(r.version for r in successes) == list(range(1, writers + 1))
            stored = await store.read_stream("hot")
            assert [e.version for e in stored] == list(range(1, writers + 1))
            amounts = [e.event.amount for e in stored if isinstance(e.event, ContractDeposited)]
            assert sorted(amounts) == list(range(1, writers + 1))
            # Each writer's result names the version its own event landed at.
            for amount, result in zip(range(1, writers + 1), results, strict=True):
                assert result is not None
                assert stored[result.version - 1].event == ContractDeposited(amount=amount)
                assert stored[result.version - 1].position == result.first_position
            # Every acknowledged event is in the log once, at the position its writer got.
            at = self.assert_log_positions(await self.everything(store), writers)
            assert sorted(r.first_position for r in successes) == at[1:]

    @asyncio_test
    async def test_concurrent_writers_to_many_streams_fill_every_position_once(self) -> None:
        writers, appends, per_append = 64, 3, 2

        async def write_stream(store: EventStore, index: int) -> list[AppendResult]:
            sid = f"w-{index:02d}"
            results = []
            version = NO_STREAM
            for step in range(appends):
                await asyncio.sleep(0)
                amounts = [index * 100 + step * per_append + k for k in range(per_append)]
                result = await store.append(sid, deposits(*amounts), version)
                version = result.version
                results.append(result)
            return results

        async with self.open_store() as store:
            per_writer = await asyncio.gather(*(write_stream(store, i) for i in range(writers)))
            total = writers * appends * per_append
            for results in per_writer:
                for result in results:
                    self.assert_append_run([result], [per_append])
            taken = sorted(
                position
                for results in per_writer
                for result in results
                for position in range(result.first_position, result.last_position + 1)
            )
            stored = await self.everything(store)
            # Every position the writers were given holds one event, and no other does.
            at = self.assert_log_positions(stored, total)
            assert taken == at[1:]
            assert await store.last_position() == at[-1]
            for index in range(writers):
                sid = f"w-{index:02d}"
                mine = [e for e in stored if e.stream_id == sid]
                assert [e.version for e in mine] == list(range(1, appends * per_append + 1))
                assert self.events_of(mine) == deposits(
                    *(index * 100 + k for k in range(appends * per_append))
                )
                assert await store.stream_version(sid) == appends * per_append

    @asyncio_test
    async def test_concurrent_retries_of_one_append_write_it_once(self) -> None:
        ids = new_ids(2)
        async with self.open_store() as store:
            results = await asyncio.gather(
                *(store.append("once", deposits(1, 2), NO_STREAM, event_ids=ids) for _ in range(10))
            )
            stored = await self.everything(store)
            at = self.assert_log_positions(stored, 2)
            assert results == [AppendResult("once", 2, at[1], at[2])] * 10
            assert [e.event_id for e in stored] == ids

    def test_the_store_matches_a_plain_python_model(self) -> None:
        # Synchronous on purpose: the machine runs its own event loop, one per example.
        run_store_state_machine(
            self.create_store,
            settings=self.state_machine_settings,
            contiguous_positions=self.contiguous_positions,
        )
