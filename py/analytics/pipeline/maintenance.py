"""Hourly upkeep: monthly event partitions ahead of time, and the dedup sweep.

Dedup records are kept for `retention` (at least 7 days: a retry within that time is still
recognised), then deleted in bounded batches so no single statement holds locks for long.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import asyncpg

from analytics.store.partitions import ensure_partitions

log = logging.getLogger(__name__)

SWEEP_SQL = """
DELETE FROM dedup WHERE (customer_id, dedup_key) IN (
    SELECT customer_id, dedup_key FROM dedup WHERE first_seen < $1 LIMIT $2
)
"""


async def sweep_dedup(
    pool: asyncpg.Pool, now: datetime, retention: timedelta, batch: int = 10_000
) -> int:
    """Delete dedup records first seen before `now - retention`; returns how many."""
    if retention < timedelta(days=7):
        raise ValueError("dedup records are kept at least 7 days")
    deleted = 0
    while True:
        status = await pool.execute(SWEEP_SQL, now - retention, batch)
        n = int(status.split()[-1])
        deleted += n
        if n < batch:
            return deleted
        await anyio.lowlevel.checkpoint()  # let other work in between batches


async def run_maintenance(
    pool: asyncpg.Pool, retention: timedelta, every_s: float = 3600.0
) -> None:
    """Until cancelled: partitions for the coming months, then the dedup sweep, each hour."""
    while True:
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            created = await ensure_partitions(conn, now)
        deleted = await sweep_dedup(pool, now, retention)
        if created or deleted:
            log.info("maintenance", extra={"partitions_created": created, "dedup_swept": deleted})
        await anyio.sleep(every_s)
