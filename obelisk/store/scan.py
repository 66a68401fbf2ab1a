"""Finding the events of a store that cannot be decoded, for ``obelisk inspect --undecodable``.

The write path refuses a value that would not read back, but a store can still hold such a
row: written before that check existed, by another writer, by hand, or of a type whose
class this process does not import. This scan reads the whole log once, in pages, keeping
those rows as :class:`~obelisk.domain.events.UndecodableEvent` records instead of stopping
at the first.
"""

from __future__ import annotations

from obelisk.domain.events import UndecodableEvent
from obelisk.errors import ValidationError
from obelisk.store.base import EventStore
from obelisk.store.records import StoredEvent

__all__ = ["find_undecodable"]


async def find_undecodable(
    store: EventStore, *, after: int = 0, limit: int = 100, page_size: int = 1000
) -> list[StoredEvent]:
    """Up to ``limit`` stored events after ``after`` that cannot be decoded here, in log
    order, each holding an UndecodableEvent (its type, raw payload and the reason).

    Reads every event after ``after`` (a full scan of the log): a tool, not a hot path.
    """
    if type(limit) is not int or limit < 0 or type(page_size) is not int or page_size < 1:
        raise ValidationError("limit must be an int >= 0 and page_size an int >= 1")
    found: list[StoredEvent] = []
    position = after
    while len(found) < limit:
        page = await store.read_all(after=position, limit=page_size, keep_undecodable=True)
        found.extend(s for s in page if type(s.event) is UndecodableEvent)
        if len(page) < page_size:
            break
        position = page[-1].position
    return found[:limit]
