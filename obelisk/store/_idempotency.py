"""Shared rule for idempotent appends by event id."""

from __future__ import annotations

from collections.abc import Sequence

from obelisk.errors import IdempotencyConflict
from obelisk.store.records import AppendResult

__all__ = ["replayed_result"]


def replayed_result(
    stream_id: str, found: Sequence[tuple[str, int, int] | None]
) -> AppendResult:
    """The first result of an append whose event ids are all stored already.

    ``found`` holds, per requested id in order, the stored (stream_id, version, position)
    or None. The retry is accepted only when every id is stored, in this stream, at
    consecutive versions: anything else is a reused id, not a retry.
    """
    if any(item is None for item in found):
        raise IdempotencyConflict(
            f"append to {stream_id!r} mixes stored and new event ids: not a retry of one append"
        )
    rows = [item for item in found if item is not None]
    _, first_version, first_position = rows[0]
    for offset, (stored_stream, version, position) in enumerate(rows):
        if (
            stored_stream != stream_id
            or version != first_version + offset
            or position != first_position + offset
        ):
            raise IdempotencyConflict(
                f"event ids of the append to {stream_id!r} were stored by a different append"
            )
    _, last_version, last_position = rows[-1]
    return AppendResult(stream_id, last_version, first_position, last_position)
