"""How ``obelisk inspect --undecodable`` shows the events a store cannot give back."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from obelisk.domain.events import UndecodableEvent
from obelisk.store.records import StoredEvent

__all__ = ["print_undecodable", "undecodable_rows"]

_PAYLOAD_SHOWN = 200


def undecodable_rows(found: Sequence[StoredEvent]) -> list[dict[str, object]]:
    """One JSON-ready row per undecodable event (the payload as text, lossless for JSON)."""
    rows: list[dict[str, object]] = []
    for stored in found:
        event = stored.event
        assert isinstance(event, UndecodableEvent)
        rows.append(
            {
                "position": stored.position,
                "stream_id": stored.stream_id,
                "version": stored.version,
                "event_type": event.type_name,
                "schema_version": event.stored_schema_version,
                "unknown_type": event.unknown_type,
                "reason": event.error,
                "payload": event.data.decode("utf-8", "backslashreplace"),
            }
        )
    return rows


def print_undecodable(found: Sequence[StoredEvent], json_output: bool) -> None:
    """Print ``found`` as a table (payloads cut short) or as one JSON object."""
    rows = undecodable_rows(found)
    if json_output:
        sys.stdout.write(json.dumps({"undecodable": rows}, indent=2) + "\n")
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not rows:
        console.print("every event decodes")
        return
    table = Table(title="events that cannot be decoded", box=box.SIMPLE_HEAD)
    for column in ("position", "stream", "version", "type", "reason", "payload"):
        table.add_column(column, justify="right" if column in ("position", "version") else "left")
    for row in rows:
        payload = str(row["payload"])
        if len(payload) > _PAYLOAD_SHOWN:
            payload = payload[:_PAYLOAD_SHOWN] + "..."
        table.add_row(
            str(row["position"]), str(row["stream_id"]), str(row["version"]),
            f"{row['event_type']} v{row['schema_version']}", str(row["reason"]), payload,
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{len(rows)} undecodable event(s): deploy an upcaster for the bad shape, or the "
        "missing event class (docs/event-store.md, 'Undecodable events')"
    )
