"""What a database holds, for `analytics db status`: server, size, schema, events, customers.

Cheap on a large database: the event count is exact only while PostgreSQL's own estimate is
under `EXACT_COUNT_BELOW` rows and the count finishes within `count_timeout_s`; otherwise it is
the estimate, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

#: Events are counted exactly below this estimate; above, the estimate is reported.
EXACT_COUNT_BELOW = 1_000_000


@dataclass(frozen=True)
class Inventory:
    server_version: str
    database: str
    size_bytes: int
    #: The latest migration applied, e.g. `0003_key_last_used`; None before any.
    schema: str | None
    customers: int | None
    events: int | None
    #: Whether `events` is an exact count or PostgreSQL's estimate.
    events_exact: bool


async def inventory(conn: asyncpg.Connection, count_timeout_s: float = 10.0) -> Inventory:
    """The figures of the database `conn` is connected to (None where the schema lacks the
    table: an unmigrated database)."""
    head = await conn.fetchrow(
        "SELECT current_setting('server_version') AS version, current_database() AS db,"
        " pg_database_size(current_database()) AS size,"
        " to_regclass('schema_migrations') IS NOT NULL AS migrated,"
        " to_regclass('events') IS NOT NULL AS has_events"
    )
    schema = customers = events = None
    exact = False
    if head["migrated"]:
        schema = await conn.fetchval(
            "SELECT lpad(version::text, 4, '0') || '_' || name FROM schema_migrations"
            " ORDER BY version DESC LIMIT 1"
        )
    if head["has_events"]:
        customers = await conn.fetchval("SELECT count(*) FROM customers")
        events = await conn.fetchval(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
        )
        if events < EXACT_COUNT_BELOW:
            try:
                events = await conn.fetchval("SELECT count(*) FROM events", timeout=count_timeout_s)
                exact = True
            except TimeoutError:
                pass
    return Inventory(head["version"], head["db"], head["size"], schema, customers, events, exact)
