"""Hourly upkeep: monthly event partitions ahead of time, the dedup sweep, and retention.

Dedup records are kept for `retention` (at least 7 days: a retry within that time is still
recognised), then deleted in bounded batches.

Raw events are kept for `events_retention` (`ANALYTICS_RETENTION_DAYS`; zero keeps them
forever): each monthly partition lying entirely before now minus that is dropped whole, after
the minute rollups of its range were deleted in bounded batches (store/retention.py). So
events live at least the retention, and at most a month longer. A month that retention drops
is not created again by the partition upkeep here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio

from analytics.store import db, dedup
from analytics.store.partitions import ensure_partitions
from analytics.store.retention import delete_rollups, drop_partition, expired_partitions

log = logging.getLogger(__name__)

#: The shortest dedup retention allowed: a producer retrying within a week counts once.
MIN_DEDUP_RETENTION = timedelta(days=7)


async def sweep_dedup(
    pool: db.Pool, now: datetime, retention: timedelta, batch: int = 10_000
) -> int:
    """Delete dedup records first seen before `now - retention`; returns how many."""
    if retention < MIN_DEDUP_RETENTION:
        raise ValueError("dedup records are kept at least 7 days")
    return await dedup.sweep(pool, now - retention, batch)


async def apply_retention(
    pool: db.Pool, now: datetime, keep: timedelta, batch: int = 10_000
) -> list[str]:
    """Drop the monthly partitions of `events` lying entirely before `now - keep`, oldest
    first, each after deleting the rollups of its range; returns the names dropped. A
    partition whose lock is not granted in time stays for the next run. `keep` of zero (or
    less) keeps everything."""
    if keep <= timedelta(0):
        return []
    async with pool.acquire() as conn:
        expired = await expired_partitions(conn, now - keep)
    dropped: list[str] = []
    for partition in expired:
        await delete_rollups(pool, partition.start, partition.end, batch)
        async with pool.acquire() as conn:
            if await drop_partition(conn, partition):
                dropped.append(partition.name)
    return dropped


def _months_back(now: datetime, keep: timedelta) -> int:
    """How many past months the partition upkeep creates: last month's only while retention
    keeps some of it (else every run would create what retention drops)."""
    if keep <= timedelta(0):
        return 1
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return 1 if month_start > now - keep else 0


async def run_maintenance(
    pool: db.Pool,
    retention: timedelta,
    every_s: float = 3600.0,
    *,
    events_retention: timedelta = timedelta(0),
) -> None:
    """Until cancelled, each hour: partitions for the coming months, the dedup sweep (records
    older than `retention`), then event retention (`events_retention`; zero keeps every
    event)."""
    keep = events_retention
    while True:
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            created = await ensure_partitions(conn, now, months_back=_months_back(now, keep))
        deleted = await sweep_dedup(pool, now, retention)
        dropped = await apply_retention(pool, now, keep)
        if created or deleted or dropped:
            log.info(
                "maintenance",
                extra={
                    "partitions_created": created,
                    "dedup_swept": deleted,
                    "partitions_dropped": dropped,
                },
            )
        await anyio.sleep(every_s)
