"""KeyedLock: mutual exclusion per key, FIFO hand-off, cancellation without leaks."""

from __future__ import annotations

import asyncio

import pytest

from obelisk.application import KeyedLock


async def _settle(rounds: int = 5) -> None:
    """Let every ready task run until it blocks (scheduling, not timing)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self.inside = 0
        self.most_inside = 0

    async def increment(self) -> None:
        # Read, yield to the loop, write: the classic lost update when unprotected.
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        seen = self.value
        await asyncio.sleep(0)
        self.value = seen + 1
        self.inside -= 1


async def test_the_unprotected_counter_loses_updates() -> None:
    # The control for the next test: without the lock the same workload is wrong.
    counter = _Counter()
    await asyncio.gather(*(counter.increment() for _ in range(50)))
    assert counter.value < 50
    assert counter.most_inside > 1


async def test_one_key_admits_one_task_at_a_time_so_no_update_is_lost() -> None:
    lock = KeyedLock()
    counter = _Counter()

    async def locked_increment() -> None:
        await lock.acquire("account-1")
        try:
            await counter.increment()
        finally:
            lock.release("account-1")

    await asyncio.gather(*(locked_increment() for _ in range(50)))
    assert counter.value == 50
    assert counter.most_inside == 1
    assert not lock.locked("account-1")
    assert len(lock) == 0


async def test_different_keys_do_not_block_each_other() -> None:
    lock = KeyedLock()
    await lock.acquire("a")
    other = asyncio.create_task(lock.acquire("b"))
    same = asyncio.create_task(lock.acquire("a"))
    await _settle()
    assert other.done()
    assert not same.done()
    assert lock.locked("a")
    assert lock.locked("b")
    lock.release("b")
    lock.release("a")
    await same
    lock.release("a")
    assert len(lock) == 0


async def test_waiters_get_the_key_in_the_order_they_asked() -> None:
    lock = KeyedLock()
    order: list[int] = []

    async def waiter(index: int) -> None:
        await lock.acquire("k")
        order.append(index)
        await asyncio.sleep(0)  # hold it across a yield, so a newcomer could try to jump in
        lock.release("k")

    await lock.acquire("k")
    tasks = []
    for index in range(8):
        tasks.append(asyncio.create_task(waiter(index)))
        await _settle(1)  # each waiter queues before the next one is created
    assert order == []
    lock.release("k")
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    assert len(lock) == 0


async def test_a_cancelled_waiter_does_not_leak_the_key() -> None:
    lock = KeyedLock()
    await lock.acquire("k")
    waiter = asyncio.create_task(lock.acquire("k"))
    await _settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release("k")
    assert not lock.locked("k")
    assert len(lock) == 0
    await lock.acquire("k")  # free: the fast path returns at once
    lock.release("k")


async def test_a_waiter_cancelled_as_ownership_arrives_passes_the_key_on() -> None:
    lock = KeyedLock()
    await lock.acquire("k")
    doomed = asyncio.create_task(lock.acquire("k"))
    await _settle()
    next_in_line = asyncio.create_task(lock.acquire("k"))
    await _settle()
    # Hand the key to `doomed`, then cancel it before it gets to run.
    lock.release("k")
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await _settle()
    assert next_in_line.done()  # the key went on to the next waiter, not to the dead task
    assert lock.locked("k")
    lock.release("k")
    assert not lock.locked("k")
    assert len(lock) == 0


async def test_a_key_cancelled_as_ownership_arrives_with_nobody_waiting_is_freed() -> None:
    lock = KeyedLock()
    await lock.acquire("k")
    doomed = asyncio.create_task(lock.acquire("k"))
    await _settle()
    lock.release("k")
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert not lock.locked("k")
    assert len(lock) == 0


async def test_releasing_a_key_nobody_holds_raises() -> None:
    lock = KeyedLock()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release("ghost")
    await lock.acquire("k")
    lock.release("k")
    with pytest.raises(RuntimeError, match="not held"):
        lock.release("k")


async def test_an_idle_key_costs_no_memory() -> None:
    lock = KeyedLock()
    for index in range(100):
        await lock.acquire(f"key-{index}")
        lock.release(f"key-{index}")
    assert len(lock) == 0
