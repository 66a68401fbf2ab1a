"""Event stores: the EventStore port, its adapters and the payload codecs."""

from obelisk.store.base import EventStore
from obelisk.store.codec import EventCodec, JsonCodec, MsgPackCodec
from obelisk.store.memory import MemoryEventStore
from obelisk.store.records import (
    ANY,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    Snapshot,
    StoredEvent,
    StreamInfo,
    StreamSize,
    validate_stream_id,
)
from obelisk.store.scan import find_undecodable
from obelisk.store.sqlite import SQLiteEventStore
from obelisk.store.url import store_from_url

__all__ = [
    "find_undecodable",
    "ANY",
    "NO_STREAM",
    "AppendRequest",
    "AppendResult",
    "EventCodec",
    "EventStore",
    "JsonCodec",
    "MemoryEventStore",
    "MsgPackCodec",
    "SQLiteEventStore",
    "Snapshot",
    "StoredEvent",
    "StreamInfo",
    "StreamSize",
    "store_from_url",
    "validate_stream_id",
]
