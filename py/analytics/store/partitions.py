"""Monthly partitions of `events`, created ahead of time.

`events` is range-partitioned on `ts` with a default partition. Creating a partition scans the
default partition and fails if it already holds rows of the new range, and it takes an ACCESS
EXCLUSIVE lock on `events` for a moment, blocking ingest. So partitions are made months ahead
(call `ensure_partitions` at startup and daily), only when missing, and with a short lock
timeout: a busy table makes the attempt give up until the next call rather than queue ingest
behind it. A past month whose rows already sit in the default partition is skipped with a
warning; its rows stay in the default partition.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

log = logging.getLogger(__name__)

#: Advisory lock key serializing partition creation across processes.
LOCK_KEY = 0x6576656E7473  # "events"


def _month_start(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def partition_name(month_start: datetime) -> str:
    """`events_yYYYYmMM`, the partition holding the month starting at `month_start`."""
    return f"events_y{month_start.year:04d}m{month_start.month:02d}"


async def ensure_partitions(
    conn: asyncpg.Connection,
    now: datetime,
    months_back: int = 1,
    months_ahead: int = 2,
    lock_timeout_s: float = 2.0,
) -> list[str]:
    """Create the missing monthly partitions from `months_back` before `now`'s month (UTC) to
    `months_ahead` after it; return the names created.

    Months already present cost one catalog lookup. A month that cannot be created (its rows
    are in the default partition, or a lock was not granted within `lock_timeout_s`) is logged
    and skipped; other errors raise.
    """
    now = now.astimezone(UTC)
    created: list[str] = []
    for offset in range(-months_back, months_ahead + 1):
        start = _month_start(now.year, now.month + offset)
        end = _month_start(start.year, start.month + 1)
        name = partition_name(start)
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                    continue
                await conn.execute(
                    f"CREATE TABLE {name} PARTITION OF events"
                    f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
        except asyncpg.CheckViolationError:
            log.warning("partition %s skipped: the default partition holds rows for it", name)
            continue
        except asyncpg.LockNotAvailableError:
            log.warning("partition %s skipped: lock not granted in time, retry later", name)
            continue
        created.append(name)
    return created
