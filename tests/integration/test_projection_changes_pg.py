"""The ChangeSet property on PostgreSQL: flushing merged changes through the PostgreSQL
read store (one ``unnest`` statement per group) leaves the table exactly as applying each
change on its own, in order, would have.

The property, its scenarios and its naive reference live in
``tests/unit/test_projection_tables.py``, where the SQLite read store runs them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from unit.test_projection_tables import Step, check_against_reference, scenarios

from obelisk.projections._pg_read import PostgresReadStore


@pytest.fixture
async def read_store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresReadStore]:
    async with PostgresReadStore(postgres_dsn, schema=pg_schema, pool_max_size=2) as store:
        yield store


# One store for all of a test's examples: each example writes its own fresh table.
PG_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PG_SETTINGS
@given(scenario=scenarios("single"))
async def test_on_postgres_flushing_merged_changes_equals_applying_each_change_in_order(
    read_store: PostgresReadStore, scenario: tuple[list[dict[str, Any]], list[Step]]
) -> None:
    await check_against_reference(read_store, "single", *scenario)


@PG_SETTINGS
@given(scenario=scenarios("composite"))
async def test_on_postgres_merged_changes_equal_changes_in_order_with_a_composite_key(
    read_store: PostgresReadStore, scenario: tuple[list[dict[str, Any]], list[Step]]
) -> None:
    await check_against_reference(read_store, "composite", *scenario)
