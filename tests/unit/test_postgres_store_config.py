"""PostgresEventStore settings that are refused before any connection is made."""

from __future__ import annotations

import pytest

from obelisk.errors import ValidationError
from obelisk.store.postgres import PostgresEventStore

DSN = "postgresql://nobody@127.0.0.1:1/none"  # never contacted by these tests


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": 11, "pool_max_size": 10}, "max_in_flight"),
        ({"pool_min_size": -1}, "pool_min_size"),
        ({"pool_min_size": 5, "pool_max_size": 4, "max_in_flight": 2}, "pool_min_size"),
    ],
)
def test_inconsistent_pool_settings_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresEventStore(DSN, **kwargs)


@pytest.mark.parametrize("schema", ["", "Public", "a-b", "pg_catalog", "x" * 41, 'a"b'])
def test_a_schema_name_outside_the_safe_pattern_is_refused(schema: str) -> None:
    with pytest.raises(ValidationError):
        PostgresEventStore(DSN, schema=schema)


async def test_a_store_that_was_never_opened_refuses_reads_and_appends_clearly() -> None:
    store = PostgresEventStore(DSN)
    with pytest.raises(Exception, match="not open"):
        await store.read_all()
    with pytest.raises(Exception, match="not open"):
        store.append_many([])
