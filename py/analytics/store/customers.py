"""Customers as a whole: listing them, and deleting one with every row it owns.

Every table holding a customer's rows has `customer_id` as its first column (the Citus rule),
so deleting a customer is one `DELETE ... WHERE customer_id = $1` per table, children before
the parents their foreign keys point to, in one transaction. `CUSTOMER_TABLES` is that list;
a test checks that it names every table with a `customer_id` column, so a new table cannot be
forgotten here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from analytics.store.notify import INVALIDATE

#: Every table with rows of a customer, in the order they are deleted (`api_keys` refers to
#: `customers`). `events` is deleted through its parent, which reaches every partition.
CUSTOMER_TABLES = (
    "events",
    "dedup",
    "identities",
    "rollup_minute",
    "rollup_hour",
    "rollup_pair_hour",
    "rollup_users_hour",
    "rollup_dirty",
    "usage_outbox",
    "usage_dispatch",
    "rate_buckets",
    "api_keys",
    "customers",
)

#: The event-time range of a whole customer, in µs since the epoch, for cache invalidations.
ALL_TIME_US = (0, 253_402_300_800_000_000)  # 1970-01-01 .. 10000-01-01


@dataclass(frozen=True)
class CustomerListing:
    customer_id: int
    name: str
    created_at: datetime
    active_keys: int
    revoked_keys: int


async def list_customers(conn: asyncpg.Connection) -> list[CustomerListing]:
    """Every customer, by name, with how many of its keys are active and revoked."""
    rows = await conn.fetch(
        """
        SELECT c.customer_id, c.name, c.created_at,
               count(k.key_id) FILTER (WHERE k.revoked_at IS NULL) AS active,
               count(k.key_id) FILTER (WHERE k.revoked_at IS NOT NULL) AS revoked
        FROM customers c LEFT JOIN api_keys k USING (customer_id)
        GROUP BY c.customer_id, c.name, c.created_at
        ORDER BY c.name
        """
    )
    return [
        CustomerListing(r["customer_id"], r["name"], r["created_at"], r["active"], r["revoked"])
        for r in rows
    ]


async def find_customer(conn: asyncpg.Connection, name: str) -> int | None:
    """The id of the customer named `name`, or None."""
    return await conn.fetchval("SELECT customer_id FROM customers WHERE name = $1", name)


# Sent inside the deleting transaction, so workers drop cached answers only if it commits.
_INVALIDATE_SQL = f"""
SELECT count(pg_notify('{INVALIDATE}', json_build_array(
    $1::bigint, name, {ALL_TIME_US[0]}, {ALL_TIME_US[1]})::text))
FROM (SELECT DISTINCT name FROM rollup_minute WHERE customer_id = $1 AND dim = '') AS n
"""


async def delete_customer(conn: asyncpg.Connection, name: str) -> dict[str, int] | None:
    """Delete the customer named `name` and every row it owns, in one transaction; the rows
    deleted per table (`CUSTOMER_TABLES` order), or None if there is no such customer.

    Workers keep a key they looked up for up to 10 s (their key cache), so a producer still
    sending may store rows under the deleted customer's id meanwhile: stop it first.
    """
    deleted: dict[str, int] = {}
    async with conn.transaction():
        customer_id = await conn.fetchval(
            "SELECT customer_id FROM customers WHERE name = $1 FOR UPDATE", name
        )
        if customer_id is None:
            return None
        await conn.fetchval(_INVALIDATE_SQL, customer_id)
        for table in CUSTOMER_TABLES:
            status = await conn.execute(f"DELETE FROM {table} WHERE customer_id = $1", customer_id)
            deleted[table] = int(status.split()[-1])
    return deleted
