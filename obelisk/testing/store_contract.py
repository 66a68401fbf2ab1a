"""The EventStore contract: one suite every adapter must pass.

Subclass :class:`EventStoreContract` in a module pytest collects, name the class
``Test...`` and implement ``create_store``::

    from obelisk.testing import EventStoreContract

    class TestMyEventStore(EventStoreContract):
        async def create_store(self, codec=None):
            store = MyEventStore(self.tmp_path / "events.db", codec=codec)
            await store.open()
            return store

A durable store also subclasses :class:`DurableEventStoreContract` and implements
``reopen_store``. A store whose positions have holes between appends (one that takes no
global lock) sets ``contiguous_positions = False``: the suite then checks positions are
unique, increasing in read order and one run per append, instead of exactly 1..n.

Every async test carries ``pytest.mark.asyncio``, so the suite runs under
pytest-asyncio in strict or auto mode. This module imports pytest and hypothesis (dev
dependencies); ``import obelisk`` does not import it.
"""

from __future__ import annotations

import abc
import asyncio
from uuid import uuid4

from obelisk.store.base import EventStore
from obelisk.store.records import NO_STREAM, AppendRequest, AppendResult
from obelisk.testing._contract_appends import AppendContract, deposits, snapshot
from obelisk.testing._contract_base import ContractBase, asyncio_test
from obelisk.testing._contract_concurrency import ConcurrencyContract
from obelisk.testing._contract_idempotency import IdempotencyContract
from obelisk.testing._contract_reads import ReadContract
from obelisk.testing._contract_snapshots import SnapshotContract
from obelisk.testing._events import ContractOpened

__all__ = ["DurableEventStoreContract", "EventStoreContract"]


class EventStoreContract(
    AppendContract,
    IdempotencyContract,
    ReadContract,
    ConcurrencyContract,
    SnapshotContract,
    ContractBase,
):
    """Every behaviour of the EventStore port, as tests; see the module docstring.

    Implement ``async def create_store(self, codec=None) -> EventStore`` returning a new,
    empty, opened store (``self.tmp_path`` is a fresh directory per test). Tests close
    the stores they get.
    """


class DurableEventStoreContract(EventStoreContract):
    """The contract plus durability: what was acknowledged survives close and reopen."""

    @abc.abstractmethod
    async def reopen_store(self, store: EventStore) -> EventStore:
        """A new, opened store over the same database as ``store`` (already closed)."""

    @asyncio_test
    async def test_acknowledged_events_survive_close_and_reopen(self) -> None:
        ids = [uuid4()]
        async with self.open_store() as store:
            await store.append(
                "acct-1",
                [ContractOpened(owner="ada")],
                NO_STREAM,
                stream_type="Account",
                correlation_id="c-1",
            )
            retried = await store.append("acct-1", deposits(1), 1, event_ids=ids)
            await store.append_many(
                [
                    AppendRequest("acct-2", deposits(2, 3), NO_STREAM),
                    AppendRequest("acct-1", deposits(4), 2),
                ]
            )
            before = await snapshot(store)
            streams = await store.list_streams()
        at = self.assert_log_positions(before[1], 5)
        assert before[0] == at[5]
        reopened = await self.reopen_store(store)
        try:
            assert await snapshot(reopened) == before
            assert await reopened.list_streams() == streams
            assert await reopened.stream_version("acct-1") == 3
            # The reopened store goes on from the stored heads, not from zero...
            after = await reopened.append("acct-2", deposits(5), 2)
            at = self.assert_log_positions(await self.everything(reopened), 6)
            assert after == AppendResult("acct-2", 3, at[6], at[6])
            # ...and still recognises a retry of an append made before the restart.
            assert await reopened.append("acct-1", deposits(1), 1, event_ids=ids) == retried
            assert await reopened.last_position() == at[6]
        finally:
            await reopened.close()

    @asyncio_test
    async def test_appends_in_flight_when_close_is_called_are_committed(self) -> None:
        # close() is graceful: it drains what was queued before it, so every caller that
        # gets a result was really written, even if the store closed right after.
        async with self.open_store() as store:
            tasks = [
                asyncio.create_task(store.append(f"fl-{n}", deposits(n), NO_STREAM))
                for n in range(20)
            ]
            await asyncio.sleep(0)  # let every task queue its append
            await store.close()
            results: list[AppendResult] = await asyncio.gather(*tasks)
        reopened = await self.reopen_store(store)
        try:
            stored = await reopened.read_all()
            at = self.assert_log_positions(stored, 20)
            assert sorted(r.first_position for r in results) == at[1:]
            by_position = {e.position: e for e in stored}
            for n, result in enumerate(results):
                self.assert_append_run([result], [1])
                assert by_position[result.first_position].stream_id == f"fl-{n}"
                assert by_position[result.first_position].event == deposits(n)[0]
        finally:
            await reopened.close()
