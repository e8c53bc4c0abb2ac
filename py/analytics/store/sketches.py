"""Unique users per (event name, dimension value, hour) as HyperLogLog sketches: what the
rollup job adds to them, what an erasure rebuilds, and what a query reads.

Sketches do not add up like counts, so they are not upserted in SQL: the job reads the
users of the events it folds, one JSON row per event (`users_sql`), groups them into a
sketch per key in Rust (`hll_group`), reads the sketches already stored for those keys and
writes back their merge (the Rust work off the event loop: the caller passes `cpu`, which
runs a function in a worker thread). A user is counted
by the identified id its anonymous id was linked to when the job folded it (the exact count
of a query over raw events applies links made later too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from analytics.normalize import hll_group, hll_merge
from analytics.store.dimensions import dimension_expr
from analytics.store.identities import IDENTIFIED_USER, IDENTITY_JOIN

#: Runs `fn(*args)` in a worker thread and returns its result (Offload.run with a limiter).
Cpu = Callable[..., Awaitable[Any]]

Key = tuple[int, str, str, str, datetime]

#: Where the users of events without dimension `d` are kept: dim `!d` (a name dimensions
#: cannot have), value ''. So a grouped answer has its None group from sketches too. (The
#: same prefix as `MISSING` in rust/normalize/src/hll_group.rs, which writes them.)
MISSING = "!"


def users_sql(dimensions: tuple[str, ...], where: str) -> str:
    """The users of the events matching `where` (SQL over `e`, the events), one JSON row per
    event: `[customer, name, hour (Unix seconds), user, [value of each dimension or null]]`,
    the dimensions in `sorted(dimensions)` order, as one text value. `add_users` groups them
    by sketch key in Rust (`hll_group`): a grouping in SQL (a row per event and key, then
    `array_agg(DISTINCT user)`) was 56 % of the fold's database CPU."""
    values = ", ".join(
        dimension_expr(d, "e.properties", flags="e.flags") for d in sorted(dimensions)
    )
    return f"""
SELECT coalesce(json_agg(json_build_array(
           e.customer_id, e.name,
           extract(epoch FROM date_trunc('hour', e.ts, 'UTC'))::bigint,
           {IDENTIFIED_USER}, json_build_array({values})))::text, '[]')
FROM events e {IDENTITY_JOIN}
WHERE {where} AND e.user_id IS NOT NULL
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


def _groups(rows_json: str, dims: list[str]) -> tuple[list[tuple[Key, bytes]], list[list[Any]]]:
    """The fold's users as (key, sketch) per key, and the keys as column lists (CPU: Rust)."""
    groups = [
        ((c, n, d, v, datetime.fromtimestamp(h, UTC)), sketch)
        for c, n, d, v, h, sketch in hll_group(rows_json, dims)
    ]
    return groups, _columns([k for k, _ in groups])


def merged_sketches(groups: list[tuple[Key, bytes]], stored_rows: Sequence[Any]) -> list[bytes]:
    """Each key's new sketch merged with the one stored for it (CPU: Rust)."""
    stored = {(r[0], r[1], r[2], r[3], r[4]): r[5] for r in stored_rows}
    out = []
    for key, sketch in groups:
        old = stored.get(key)
        out.append(hll_merge([old, sketch]) if old is not None else sketch)
    return out


async def add_users(
    conn: asyncpg.Connection,
    groups_sql: str,
    dims: list[str],
    args: Sequence[object],
    cpu: Cpu,
    timeout_s: float,
) -> int:
    """Merge the users `groups_sql` finds (a `users_sql` of `dims`, sorted) into the stored
    sketches; returns
    how many sketches were written. Runs inside the caller's transaction (the fold's). What
    is not the driver's own work runs through `cpu` (off the event loop in the service)."""
    rows_json = await conn.fetchval(groups_sql, *args, timeout=timeout_s)
    groups, key_columns = await cpu(_groups, rows_json, dims)
    if not groups:
        return 0
    stored = await conn.fetch(_STORED_SQL, *key_columns, timeout=timeout_s)
    sketches = await cpu(merged_sketches, groups, stored)
    await conn.execute(_WRITE_SQL, *key_columns, sketches, timeout=timeout_s)
    return len(groups)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """A `Cpu` that runs `fn` right here (for tools and tests, not the service's loop)."""
    return fn(*args)
