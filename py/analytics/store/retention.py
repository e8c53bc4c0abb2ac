"""Retention of raw events: whole monthly partitions dropped, their rollups deleted.

Old events go a partition at a time (DETACH, then DROP: no row-by-row delete, no bloat), and
only partitions lying entirely before the cutoff. Detaching takes an ACCESS EXCLUSIVE lock on
`events` for a moment, so it runs with a short lock timeout, as partition creation does
(store/partitions.py, whose advisory lock it shares): on a busy table it gives up until the
next attempt rather than queue ingest behind it.

The rollups of a dropped partition's range (its buckets from its start to its end, so those of
events kept in the default partition stay) are deleted in bounded batches, each its own short
transaction, walking the primary key once (keyset pagination: each batch starts after the
last key of the one before, so the whole table is read once, not once per batch). The
maintenance job deletes them before dropping the partition: if it stops in between, the
partition is still there and the next run does both again.

The default partition (events outside the monthly partitions) is never touched: retention
never deletes rows from `events`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio.lowlevel
import asyncpg

from analytics.store.notify import INVALIDATE
from analytics.store.partitions import LOCK_KEY
from analytics.store.rollups import ROLLUP_TABLES, SKETCH_TABLE, RollupTable

log = logging.getLogger(__name__)

# The monthly partitions and their ranges, read from the catalog (not from their names).
_PARTITIONS_SQL = r"""
SELECT c.relname AS name, b.bounds[1]::timestamptz AS start_ts, b.bounds[2]::timestamptz AS end_ts
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (
    SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS bounds
) AS b
WHERE i.inhparent = 'events'::regclass AND b.bounds IS NOT NULL
ORDER BY 3
"""


def _first_key(table: RollupTable) -> tuple[object, ...]:
    """The smallest possible primary key of `table`: where the walk starts."""
    return (-(2**63), *[""] * (len(table.key) - 2), datetime.min.replace(tzinfo=UTC))


def _delete_rollups_sql(table: RollupTable) -> str:
    """One batch: the next `$n+3` rows of `table` after key ($1..$n) with buckets in
    [$n+1, $n+2), deleted; returns how many and the last key (NULLs when none was left)."""
    key = ", ".join(table.key)
    after = ", ".join(f"${i + 1}" for i in range(len(table.key)))
    n = len(table.key)
    start, end, limit = f"${n + 1}", f"${n + 2}", f"${n + 3}"
    match = ", ".join(f"r.{c}" for c in table.key)
    desc = ", ".join(f"{c} DESC" for c in table.key)
    return f"""
WITH batch AS (
    SELECT {key} FROM {table.name}
    WHERE ({key}) > ({after}) AND bucket >= {start} AND bucket < {end}
    ORDER BY {key}
    LIMIT {limit}
), gone AS (
    DELETE FROM {table.name} r USING batch b
    WHERE ({match}) = ({", ".join(f"b.{c}" for c in table.key)})
    RETURNING r.customer_id, r.name
), notified AS (
    -- The query caches drop what they hold of these events in the range.
    SELECT pg_notify('{INVALIDATE}', json_build_array(
               customer_id, name,
               (extract(epoch FROM {start}::timestamptz) * 1e6)::bigint,
               (extract(epoch FROM {end}::timestamptz) * 1e6)::bigint)::text)::text AS sent
    FROM (SELECT DISTINCT customer_id, name FROM gone) AS n
), last AS (
    SELECT * FROM batch ORDER BY {desc} LIMIT 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM notified) AS notified,
       {", ".join(f"l.{c}" for c in table.key)}
FROM (SELECT 1) AS one LEFT JOIN last l ON true
"""


#: Every table of rollups (and sketches) a dropped month's buckets are deleted from.
_WITH_ROLLUPS = (*ROLLUP_TABLES, SKETCH_TABLE)
_DELETE_ROLLUPS = {t.name: _delete_rollups_sql(t) for t in _WITH_ROLLUPS}


@dataclass(frozen=True)
class Partition:
    """A monthly partition of `events`, holding `start <= ts < end`."""

    name: str
    start: datetime
    end: datetime


async def monthly_partitions(conn: asyncpg.Connection) -> list[Partition]:
    """Every range partition of `events` (the default partition aside), oldest first."""
    rows = await conn.fetch(_PARTITIONS_SQL)
    return [Partition(r["name"], r["start_ts"], r["end_ts"]) for r in rows]


async def expired_partitions(conn: asyncpg.Connection, cutoff: datetime) -> list[Partition]:
    """The partitions lying entirely before `cutoff` (their end at or before it)."""
    return [p for p in await monthly_partitions(conn) if p.end <= cutoff]


async def delete_rollups(
    pool: asyncpg.Pool | asyncpg.Connection, start: datetime, end: datetime, batch: int = 10_000
) -> int:
    """Delete the rollups (every table) of buckets in `[start, end)`, `batch` rows per
    transaction; returns how many. Each batch notifies the query caches of the events it
    touched."""
    deleted = 0
    for table in _WITH_ROLLUPS:
        key = _first_key(table)
        while True:
            row = await pool.fetchrow(_DELETE_ROLLUPS[table.name], *key, start, end, batch)
            deleted += row["deleted"]
            if row["customer_id"] is None:
                break
            key = tuple(row[c] for c in table.key)
            await anyio.lowlevel.checkpoint()  # let other work in between batches
    return deleted


async def drop_partition(
    conn: asyncpg.Connection, partition: Partition, lock_timeout_s: float = 2.0
) -> bool:
    """Detach and drop `partition`, in one transaction with a lock timeout; False when it is
    no longer attached or the lock was not granted in time (logged: retry later)."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            attached = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits"
                " WHERE inhparent = 'events'::regclass AND inhrelid = to_regclass($1))",
                partition.name,
            )
            if not attached:
                return False
            await conn.execute(f'ALTER TABLE events DETACH PARTITION "{partition.name}"')
            await conn.execute(f'DROP TABLE "{partition.name}"')
    except asyncpg.LockNotAvailableError:
        log.warning(
            "partition %s not dropped: lock not granted in time, retry later", partition.name
        )
        return False
    return True
