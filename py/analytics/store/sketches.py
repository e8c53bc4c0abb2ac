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
from analytics.store.identities import identified_user, identity_join

#: Runs `fn(*args)` in a worker thread and returns its result (Offload.run with a limiter).
Cpu = Callable[..., Awaitable[Any]]

Key = tuple[int, str, str, str, datetime]

#: Where the users of events without dimension `d` are kept: dim `!d` (a name dimensions
#: cannot have), value ''. So a grouped answer has its None group from sketches too. (The
#: same prefix as `MISSING` in rust/normalize/src/hll_group.rs, which writes them.)
MISSING = "!"


def users_json(alias: str, values: list[str], from_where: str) -> str:
    """A SQL expression: the users of the events of `from_where` (a FROM ... WHERE over
    events or a CTE of them, as `alias`, joined with identities as `i`), one JSON row per
    event, `[customer, name, hour (Unix seconds), user, [values]]`, as one text value.
    `values` are the SQL of each dimension's value, in `sorted(dimensions)` order. Rust
    (`hll_group`) groups them by sketch key: a grouping in SQL (a row per event and key,
    then `array_agg(DISTINCT user)`) was 56 % of the fold's database CPU."""
    a = alias
    return f"""(SELECT coalesce(json_agg(json_build_array(
           {a}.customer_id, {a}.name,
           extract(epoch FROM date_trunc('hour', {a}.ts, 'UTC'))::bigint,
           {identified_user(a)}, json_build_array({", ".join(values)})))::text, '[]')
    {from_where} AND {a}.user_id IS NOT NULL)"""


def users_sql(dimensions: tuple[str, ...], where: str) -> str:
    """The users of the events matching `where` (SQL over `e`, the events), as `users_json`
    gives them: for `add_users`."""
    values = [dimension_expr(d, "e.properties", flags="e.flags") for d in sorted(dimensions)]
    return "SELECT " + users_json("e", values, f"FROM events e {identity_join('e')} WHERE {where}")


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


#: Sketches read, merged and written per statement: the driver encodes a statement's
#: parameters (the key arrays, the sketches) on the event loop, ~1 µs per key and column,
#: so a fold of a large backlog (tens of thousands of keys) writes in chunks.
WRITE_CHUNK = 5_000


def _columns(keys: Sequence[Key]) -> list[list[Any]]:
    return [list(c) for c in zip(*keys, strict=True)] if keys else [[], [], [], [], []]


def _keyed(
    sketches: Sequence[tuple[Any, ...]],
) -> tuple[list[tuple[Key, bytes]], list[list[Any]]]:
    """Sketches as `hll_group` gives them, as (key, sketch) per key (the hour a timestamp),
    and the keys as column lists."""
    groups = [
        ((c, n, d, v, datetime.fromtimestamp(h, UTC)), sketch) for c, n, d, v, h, sketch in sketches
    ]
    return groups, _columns([k for k, _ in groups])


def _groups(rows_json: str, dims: list[str]) -> tuple[list[tuple[Key, bytes]], list[list[Any]]]:
    """The fold's users as (key, sketch) per key, and the keys as column lists (CPU: Rust)."""
    return _keyed(hll_group(rows_json, dims))


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
    sketches; returns how many sketches were written."""
    rows_json = await conn.fetchval(groups_sql, *args, timeout=timeout_s)
    return await merge_users(conn, rows_json, dims, cpu, timeout_s)


async def merge_users(
    conn: asyncpg.Connection,
    rows_json: str,
    dims: list[str],
    cpu: Cpu,
    timeout_s: float,
) -> int:
    """Merge the users of `rows_json` (as `users_json` gives them, over `dims`, sorted) into
    the stored sketches; returns how many sketches were written. Runs inside the caller's
    transaction (the fold's). What is not the driver's own work runs through `cpu` (off the
    event loop in the service)."""
    groups, key_columns = await cpu(_groups, rows_json, dims)
    for first in range(0, len(groups), WRITE_CHUNK):
        # The driver encodes a statement's arrays on the loop: a chunk of keys at a time.
        chunk = slice(first, first + WRITE_CHUNK)
        columns = [c[chunk] for c in key_columns]
        stored = await conn.fetch(_STORED_SQL, *columns, timeout=timeout_s)
        sketches = await cpu(merged_sketches, groups[chunk], stored)
        await conn.execute(_WRITE_SQL, *columns, sketches, timeout=timeout_s)
    return len(groups)


async def write_sketches(
    conn: asyncpg.Connection, sketches: Sequence[tuple[Any, ...]], cpu: Cpu, timeout_s: float
) -> None:
    """Write `sketches` (as `hll_group` gives them: every user of their keys, in key order)
    over the stored ones: a rebuild's, from every event of their hours (keyed through
    `cpu`, as `merge_users` does)."""
    groups, key_columns = await cpu(_keyed, sketches)
    for first in range(0, len(groups), WRITE_CHUNK):
        chunk = slice(first, first + WRITE_CHUNK)
        columns = [c[chunk] for c in key_columns]
        sketch_bytes = [sketch for _, sketch in groups[chunk]]
        await conn.execute(_WRITE_SQL, *columns, sketch_bytes, timeout=timeout_s)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """A `Cpu` that runs `fn` right here (for tools and tests, not the service's loop)."""
    return fn(*args)
