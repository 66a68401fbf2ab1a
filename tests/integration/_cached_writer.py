"""One of two processes depositing into the same account, each with its aggregate cache.

Usage: ``python _cached_writer.py STORE_URL ACCOUNT COUNT AMOUNT MODE``

Waits for a ``go`` line on stdin (so both processes start together), then sends COUNT
Deposit commands of AMOUNT to ACCOUNT through an Application with the cache on (MODE:
``trust`` or ``fast-forward``) and snapshots every 5 events, retrying on ConcurrencyError,
and prints ``done`` with how many retries it needed.
"""

from __future__ import annotations

import asyncio
import sys

from obelisk.application import Application, RetryPolicy, SnapshotPolicy
from obelisk.demo.bank import Deposit, register_bank_handlers


async def main(url: str, account: str, count: int, amount: int, mode: str) -> None:
    app = register_bank_handlers(
        Application(
            url,
            retry=RetryPolicy(attempts=1000, base_delay=0.0005, max_delay=0.005),
            cache_mode=mode,  # type: ignore[arg-type]
            snapshots=SnapshotPolicy(every=5),
        )
    )
    async with app:
        await asyncio.to_thread(sys.stdin.readline)
        for _ in range(count):
            await app.handle(Deposit(account_id=account, amount=amount))
        print("done", app.cache.evictions, flush=True)


if __name__ == "__main__":
    url, account, count, amount, mode = sys.argv[1:6]
    asyncio.run(main(url, account, int(count), int(amount), mode))
