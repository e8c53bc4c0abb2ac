"""Erasure of one user's events (a data subject's request): raw rows and their share of the
rollups, in one transaction.

The events the rollup job has folded (below its watermark) are in the rollups: erasing
subtracts them with the job's own SQL (`rollups.fold_sql` with sign -1), and deletes the
rollup rows that reach a count of 0. Events not folded yet are only deleted. The erasure
holds the job's lock, so the watermark cannot move while it decides which is which. The
subtraction upserts in key order, as the fold does, so it cannot deadlock with one.

Dedup records stay: a producer retrying an erased event within the dedup retention gets
`duplicates`, and the event is not stored again. Billing usage already counted stays too.

The unique users' sketches of the hours the erased events were in are built again from the
events left (a sketch cannot forget a user).

The rollups are computed for the configured dimensions; rows written under another
configuration are subtracted as the current one reads the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from analytics.store.notify import INVALIDATE
from analytics.store.rollups import FOLD_LOCK, RollupTable, fold_sql, tables_for
from analytics.store.sketches import add_users, inline, users_sql


def delete_emptied_sql(table: RollupTable) -> str:
    """Delete the rows of `table` listed in $1 (JSON, as `fold_sql` returns them) that are
    still at a count of 0 or less. They stay locked by the fold until commit."""
    match = " AND ".join(f"t.{c} = e.{c}" for c in table.key)
    return (
        f"DELETE FROM {table.name} t USING json_populate_recordset(NULL::{table.name}, "
        f"$1::json) e WHERE {match} AND t.count <= 0"
    )


@dataclass(frozen=True)
class Erased:
    """What an erasure changed: raw events deleted, rollup rows lowered, and of those, the
    ones deleted because nothing was left in them."""

    events: int
    rollup_rows: int
    rollup_rows_deleted: int


def erase_sql(dimensions: tuple[str, ...]) -> str:
    """The erasure statement for these dimensions. Parameters: $1 customer id, $2 user id.

    Returns one row: `erased` (events deleted), `events` (of those, the folded ones
    subtracted), `rollup_rows` changed, and per rollup table the rows left at a count of 0 or
    less (`emptied_<table>`, JSON), which the second statements delete. Each event name
    erased sends a cache invalidation for its time range.
    """
    gone = (
        "gone AS MATERIALIZED (DELETE FROM events WHERE customer_id = $1 AND user_id = $2"
        " RETURNING customer_id, name, ts, value, properties, flags, xid)"
    )
    notified = f"""notified AS (
    SELECT pg_notify('{INVALIDATE}', json_build_array(
               $1::bigint, name,
               (extract(epoch FROM min(ts)) * 1e6)::bigint,
               (extract(epoch FROM max(ts)) * 1e6)::bigint)::text)::text AS sent
    FROM gone GROUP BY name)"""
    changed = " + ".join(f"(SELECT count(*) FROM up_{t.name})" for t in tables_for(dimensions))
    return fold_sql(
        dimensions,
        "SELECT customer_id, name, ts, value, properties, flags FROM gone"
        " WHERE xid IS NULL OR xid < (SELECT watermark FROM rollup_state)",
        sign=-1,
        before=(gone, notified),
        also=(
            "(SELECT count(*) FROM gone) AS erased",
            "(SELECT count(*) FROM notified) AS notified",
            f"{changed} AS rollup_rows",
            # The hours whose user sketches held the erased (folded) events: rebuilt after.
            "(SELECT coalesce(json_agg(DISTINCT jsonb_build_array(name,"
            " date_trunc('hour', ts, 'UTC'))), '[]') FROM src) AS touched",
        ),
    )


#: The folded events of the touched hours, whose users make the rebuilt sketches.
_REBUILD_WHERE = """e.customer_id = $1
    AND (e.name, date_trunc('hour', e.ts, 'UTC')) IN (
        SELECT n, b FROM unnest($2::text[], $3::timestamptz[]) AS t(n, b))
    AND e.xid < (SELECT watermark FROM rollup_state)"""

_DROP_SKETCHES_SQL = """
DELETE FROM rollup_users_hour
WHERE customer_id = $1 AND (name, bucket) IN (
    SELECT n, b FROM unnest($2::text[], $3::timestamptz[]) AS t(n, b))
"""

#: Marked hours the erasure wrote rows in (subtracted, sketches rebuilt): no longer bare
#: (store/deferred.py, migration 0011).
_NOT_BARE_SQL = """
UPDATE rollup_dirty SET bare = false
WHERE customer_id = $1 AND bare AND (name, hour) IN (
    SELECT n, b FROM unnest($2::text[], $3::timestamptz[]) AS t(n, b))
"""

# The user's identity links go too (Segment identify/alias, PostHog $identify): both ways.
_FORGET_LINKS_SQL = """
DELETE FROM identities WHERE customer_id = $1 AND (user_id = $2 OR anonymous_id = $2)
"""


async def erase_user(
    conn: asyncpg.Connection, customer_id: int, user_id: str, dimensions: tuple[str, ...]
) -> Erased:
    """Delete every event of `user_id` stored for the customer, and subtract the folded ones
    from the rollups, in one transaction. Idempotent: a second call finds nothing and
    changes nothing."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", FOLD_LOCK)
        row = await conn.fetchrow(erase_sql(dimensions), customer_id, user_id)
        await conn.execute(_FORGET_LINKS_SQL, customer_id, user_id)
        emptied = 0
        for table in tables_for(dimensions):
            rows = row[f"emptied_{table.name}"]
            if rows and orjson.loads(rows):
                status = await conn.execute(delete_emptied_sql(table), rows)
                emptied += int(status.split()[-1])
        # A sketch cannot forget a user: the touched hours' sketches are built again from
        # the events left (deterministic, so equal to what folding those alone would make).
        touched = orjson.loads(row["touched"])
        if touched:
            names = [n for n, _ in touched]
            hours = [datetime.fromisoformat(b) for _, b in touched]
            await conn.execute(_DROP_SKETCHES_SQL, customer_id, names, hours)
            await conn.execute(_NOT_BARE_SQL, customer_id, names, hours)
            rebuild = users_sql(dimensions, _REBUILD_WHERE)
            await add_users(
                conn, rebuild, sorted(dimensions), (customer_id, names, hours), inline, 600.0
            )
    return Erased(row["erased"], row["rollup_rows"], emptied)
