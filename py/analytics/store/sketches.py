"""Unique users per (event name, dimension value, hour) as HyperLogLog sketches: what the
rollup job adds to them, what an erasure rebuilds, and what a query reads.

Sketches do not add up like counts, so they are not upserted in SQL: the job reads the
distinct users of the events it folds per key (`FRESH_USERS_SQL`), the sketches already
stored for those keys, and writes back their merge (built and merged in Rust, off the event
loop: the caller passes `cpu`, which runs a function in a worker thread). A user is counted
by the identified id its anonymous id was linked to when the job folded it (the exact count
of a query over raw events applies links made later too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from analytics.normalize import hll_build, hll_merge
from analytics.store.dimensions import dimension_expr
from analytics.store.identities import IDENTIFIED_USER, IDENTITY_JOIN

#: Runs `fn(*args)` in a worker thread and returns its result (Offload.run with a limiter).
Cpu = Callable[..., Awaitable[Any]]

Key = tuple[int, str, str, str, datetime]

#: Where the users of events without dimension `d` are kept: dim `!d` (a name dimensions
#: cannot have), value ''. So a grouped answer has its None group from sketches too.
MISSING = "!"


def users_sql(dimensions: tuple[str, ...], where: str) -> str:
    """The distinct users of the events matching `where` (SQL over `e`, the events), per
    (customer, name, dimension or '' for the total, value, hour); events without a dimension
    `d` under `!d` (`MISSING`). Each dimension is read from the JSON once per event."""
    dims = sorted(dimensions)
    values = ", ".join(
        f"{dimension_expr(d, 'e.properties', flags='e.flags')} AS d{i}" for i, d in enumerate(dims)
    )
    singles = ["('', '')"]
    for i, d in enumerate(dims):
        singles.append(f"('{d}', f.d{i})")
        singles.append(f"('{MISSING}{d}', CASE WHEN f.d{i} IS NULL THEN '' END)")
    return f"""
WITH f AS MATERIALIZED (
    SELECT e.customer_id, e.name, date_trunc('hour', e.ts, 'UTC') AS bucket,
           {IDENTIFIED_USER} AS uid, {values}
    FROM events e {IDENTITY_JOIN}
    WHERE {where} AND e.user_id IS NOT NULL
)
SELECT f.customer_id, f.name, d.dim, d.val AS dim_value, f.bucket,
       array_agg(DISTINCT f.uid) AS users
FROM f CROSS JOIN LATERAL (VALUES {", ".join(singles)}) AS d(dim, val)
WHERE d.val IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
"""


_STORED_SQL = """
SELECT s.customer_id, s.name, s.dim, s.dim_value, s.bucket, s.sketch
FROM rollup_users_hour s
JOIN unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
    AS k(customer_id, name, dim, dim_value, bucket)
  USING (customer_id, name, dim, dim_value, bucket)
"""

_WRITE_SQL = """
INSERT INTO rollup_users_hour AS r (customer_id, name, dim, dim_value, bucket, sketch)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::bytea[])
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (customer_id, name, dim, dim_value, bucket) DO UPDATE SET sketch = excluded.sketch
"""


def _columns(keys: Sequence[Key]) -> list[list[Any]]:
    return [list(c) for c in zip(*keys, strict=True)] if keys else [[], [], [], [], []]


def _groups(rows: Sequence[Any]) -> tuple[list[tuple[Key, list[str]]], list[list[Any]]]:
    """The users query's rows as (key, users) and the keys as column lists (CPU)."""
    groups = [((r[0], r[1], r[2], r[3], r[4]), list(r[5])) for r in rows]
    return groups, _columns([k for k, _ in groups])


def merged_sketches(groups: list[tuple[Key, list[str]]], stored_rows: Sequence[Any]) -> list[bytes]:
    """Each group's users as a sketch, merged with the one stored for its key (CPU: Rust)."""
    stored = {(r[0], r[1], r[2], r[3], r[4]): r[5] for r in stored_rows}
    out = []
    for key, users in groups:
        sketch = hll_build(users)
        old = stored.get(key)
        out.append(hll_merge([old, sketch]) if old is not None else sketch)
    return out


async def add_users(
    conn: asyncpg.Connection, groups_sql: str, args: Sequence[object], cpu: Cpu, timeout_s: float
) -> int:
    """Merge the users `groups_sql` finds (a `users_sql`) into the stored sketches; returns
    how many sketches were written. Runs inside the caller's transaction (the fold's). What
    is not the driver's own work runs through `cpu` (off the event loop in the service)."""
    rows = await conn.fetch(groups_sql, *args, timeout=timeout_s)
    if not rows:
        return 0
    groups, key_columns = await cpu(_groups, rows)
    stored = await conn.fetch(_STORED_SQL, *key_columns, timeout=timeout_s)
    sketches = await cpu(merged_sketches, groups, stored)
    await conn.execute(_WRITE_SQL, *key_columns, sketches, timeout=timeout_s)
    return len(groups)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """A `Cpu` that runs `fn` right here (for tools and tests, not the service's loop)."""
    return fn(*args)
