"""Erasure of one user's events (a data subject's request): raw rows and their share of the
rollups, in one transaction.

The minute rollups hold counts and sums per (event name, dimension, value, minute), one row
per dimension plus the total (`dim = ''`), written by the group commit with
`dimensions.dimension_expr`. Erasing computes the same rows for the events it deletes, with
the same expressions, and subtracts them; a rollup row whose count reaches 0 is deleted. The
subtraction is an upsert in key order, as the writer's addition is, so an erasure and
concurrent commits lock rollup rows in the same order and cannot deadlock.

Dedup records stay: a producer retrying an erased event within the dedup retention gets
`duplicates`, and the event is not stored again. Billing usage already counted stays too.

The rollups must be computed the way they were written: the configured dimensions, and the
`enrichment` flag's state for `browser`. Rows written under another configuration are
subtracted as the current one reads the events.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from analytics.store.dimensions import dimension_expr
from analytics.store.notify import INVALIDATE


@dataclass(frozen=True)
class Erased:
    """What an erasure changed: raw events deleted, rollup rows lowered, and of those, the
    ones deleted because nothing was left in them."""

    events: int
    rollup_rows: int
    rollup_rows_deleted: int


def erase_sql(dimensions: tuple[str, ...], *, enrich: bool = True) -> str:
    """The erasure statement for these dimensions. Parameters: $1 customer id, $2 user id.

    Returns one row: `events` deleted, `rollup_rows` changed, and the keys (`names`, `dims`,
    `dim_values`, `buckets`, parallel arrays) of the rollup rows left with a count of 0 or
    less, which the second statement deletes. A delta with no rollup row to subtract from
    (written under another configuration) inserts one with a negative count: it is deleted
    the same way. Each (event name) erased sends a cache invalidation for its time range.
    """
    dims = ",\n            ".join(
        [
            "('', '')",
            *(f"('{d}', {dimension_expr(d, 'g.properties', enrich=enrich)})" for d in dimensions),
        ]
    )
    return f"""
WITH gone AS (
    DELETE FROM events WHERE customer_id = $1 AND user_id = $2
    RETURNING name, ts, value, properties
), deltas AS (
    SELECT g.name, d.dim, d.val AS dim_value, date_trunc('minute', g.ts, 'UTC') AS bucket,
           count(*) AS n, coalesce(sum(g.value), 0) AS s
    FROM gone g CROSS JOIN LATERAL (VALUES
            {dims}
        ) AS d(dim, val)
    WHERE d.val IS NOT NULL
    GROUP BY 1, 2, 3, 4
), applied AS (
    INSERT INTO rollup_minute AS r (customer_id, name, dim, dim_value, bucket, count, sum_value)
    SELECT $1, name, dim, dim_value, bucket, -n, -s FROM deltas
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (customer_id, name, dim, dim_value, bucket) DO UPDATE
        SET count = r.count + excluded.count, sum_value = r.sum_value + excluded.sum_value
    RETURNING r.name, r.dim, r.dim_value, r.bucket, r.count
), notified AS (
    SELECT pg_notify('{INVALIDATE}', json_build_array(
               $1::bigint, name,
               (extract(epoch FROM min(ts)) * 1e6)::bigint,
               (extract(epoch FROM max(ts)) * 1e6)::bigint)::text)
    FROM gone GROUP BY name
)
SELECT (SELECT count(*) FROM gone) AS events,
       (SELECT count(*) FROM applied) AS rollup_rows,
       (SELECT count(*) FROM notified) AS notified,
       array_agg(name) AS names, array_agg(dim) AS dims, array_agg(dim_value) AS dim_values,
       array_agg(bucket) AS buckets
FROM applied WHERE count <= 0
"""


# The rows the erasure emptied; they stay locked by it until commit, so nothing can have
# been added to them in between.
_DELETE_EMPTIED_SQL = """
DELETE FROM rollup_minute
WHERE customer_id = $1 AND count <= 0
  AND (name, dim, dim_value, bucket) IN (
      SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[]))
"""


async def erase_user(
    conn: asyncpg.Connection,
    customer_id: int,
    user_id: str,
    dimensions: tuple[str, ...],
    *,
    enrich: bool = True,
) -> Erased:
    """Delete every event of `user_id` stored for the customer, and subtract them from the
    rollups (see the module docstring for `dimensions` and `enrich`), in one transaction.
    Idempotent: a second call finds nothing and changes nothing."""
    async with conn.transaction():
        row = await conn.fetchrow(erase_sql(dimensions, enrich=enrich), customer_id, user_id)
        emptied = 0
        if row["names"]:
            status = await conn.execute(
                _DELETE_EMPTIED_SQL,
                customer_id,
                row["names"],
                row["dims"],
                row["dim_values"],
                row["buckets"],
            )
            emptied = int(status.split()[-1])
    return Erased(row["events"], row["rollup_rows"], emptied)
