"""Hourly upkeep: monthly event partitions ahead of time, and the dedup sweep.

Dedup records are kept for `retention` (at least 7 days: a retry within that time is still
recognised), then deleted in bounded batches.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg

from analytics.store import dedup
from analytics.store.partitions import ensure_partitions

log = logging.getLogger(__name__)

#: The shortest dedup retention allowed: a producer retrying within a week counts once.
MIN_DEDUP_RETENTION = timedelta(days=7)


async def sweep_dedup(
    pool: asyncpg.Pool, now: datetime, retention: timedelta, batch: int = 10_000
) -> int:
    """Delete dedup records first seen before `now - retention`; returns how many."""
    if retention < MIN_DEDUP_RETENTION:
        raise ValueError("dedup records are kept at least 7 days")
    return await dedup.sweep(pool, now - retention, batch)


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
