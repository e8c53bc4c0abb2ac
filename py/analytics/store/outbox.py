"""The billing usage outbox: usage rows written with the events they count, and dispatches.

The writer's commit statement adds rows to `usage_outbox` in the events' transaction. The
billing dispatcher (pipeline/billing_dispatch.py) claims closed windows into `usage_dispatch` rows,
one per customer and window, each with an idempotency key fixed before its first attempt,
and marks each sent once billing has accepted it, or parked when billing refused it for good.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

#: A dispatch still to be sent: neither accepted by billing nor parked for an operator.
_UNSENT = "sent_at IS NULL AND failed_at IS NULL"

# The customers with closed windows to claim (no lock: the claim below skips what another
# dispatcher locked), then one claim per customer: a row lock (FOR UPDATE) on a distributed
# table needs an equality on its distribution column under Citus, and one customer's claim
# is one shard's statement there.
_CLAIMABLE_SQL = """
SELECT DISTINCT customer_id FROM usage_outbox
WHERE dispatch_id IS NULL AND window_start < $1
ORDER BY customer_id LIMIT $2
"""

_CLAIM_SQL = """
WITH claimed AS (
    SELECT customer_id, id, window_start, count FROM usage_outbox
    WHERE customer_id = $5 AND dispatch_id IS NULL AND window_start < $1
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), groups AS (
    SELECT customer_id, window_start, sum(count)::bigint AS count, array_agg(id) AS ids
    FROM claimed GROUP BY customer_id, window_start
), made AS (
    INSERT INTO usage_dispatch AS d (customer_id, window_start, window_end, count,
                                     idempotency_key, created_at)
    SELECT customer_id, window_start, window_start + $2::interval, count, '', $4
    FROM groups
    RETURNING customer_id, dispatch_id, window_start
)
UPDATE usage_outbox o SET dispatch_id = m.dispatch_id
FROM made m JOIN groups g USING (customer_id, window_start)
WHERE o.customer_id = $5 AND o.customer_id = m.customer_id AND o.id = ANY (g.ids)
"""

# The key is derived from the dispatch row, so it is fixed before the first attempt. (The
# casts: text || bigint is STABLE, which Citus refuses in an UPDATE over columns.)
_KEY_SQL = """
UPDATE usage_dispatch
SET idempotency_key = 'usage-' || customer_id::text || '-' || dispatch_id::text
WHERE idempotency_key = ''
"""

_PENDING_SQL = f"""
SELECT customer_id, dispatch_id, window_start, window_end, count, idempotency_key
FROM usage_dispatch WHERE {_UNSENT}
ORDER BY created_at, customer_id, dispatch_id LIMIT $1
"""

_PENDING_COUNT_SQL = f"""
SELECT (SELECT count(*) FROM usage_outbox WHERE dispatch_id IS NULL)
     + (SELECT count(*) FROM usage_dispatch WHERE {_UNSENT})
"""


async def claim_windows(
    pool: asyncpg.Pool, before: datetime, window: timedelta, limit: int, now: datetime
) -> None:
    """Turn up to `limit` outbox rows of windows starting before `before` into dispatches."""
    async with pool.acquire() as conn, conn.transaction():
        for row in await conn.fetch(_CLAIMABLE_SQL, before, limit):
            await conn.execute(_CLAIM_SQL, before, window, limit, now, row["customer_id"])
        await conn.execute(_KEY_SQL)


async def pending_dispatches(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Unsent dispatches, oldest first: customer_id, dispatch_id, window_start, window_end,
    count, idempotency_key."""
    return await pool.fetch(_PENDING_SQL, limit)


async def mark_sent(pool: asyncpg.Pool, customer_id: int, dispatch_id: int, now: datetime) -> None:
    await pool.execute(
        """UPDATE usage_dispatch SET sent_at = $3, attempts = attempts + 1, last_error = NULL
           WHERE customer_id = $1 AND dispatch_id = $2""",
        customer_id,
        dispatch_id,
        now,
    )


async def mark_failed(
    pool: asyncpg.Pool,
    customer_id: int,
    dispatch_id: int,
    error: str,
    now: datetime,
    *,
    parked: bool,
) -> None:
    """Count a failed attempt; `parked` (refused for good) takes it out of the pending set."""
    await pool.execute(
        """UPDATE usage_dispatch SET attempts = attempts + 1, last_error = $3,
                  failed_at = CASE WHEN $4 THEN $5::timestamptz END
           WHERE customer_id = $1 AND dispatch_id = $2""",
        customer_id,
        dispatch_id,
        error[:500],
        parked,
        now,
    )


async def pending_count(pool: asyncpg.Pool, timeout_s: float = 5.0) -> int:
    """Usage not yet accepted by billing: unclaimed outbox rows plus unsent dispatches."""
    return await pool.fetchval(_PENDING_COUNT_SQL, timeout=timeout_s)
