"""Dedup records: one per (customer, dedup key) stored, so a retried event counts once.

The writer's commit statement inserts them; `sweep` deletes those past their retention in
bounded batches so no single statement holds locks for long.
"""

from __future__ import annotations

from datetime import datetime

import anyio.lowlevel
import asyncpg

_SWEEP_SQL = """
DELETE FROM dedup WHERE (customer_id, dedup_key) IN (
    SELECT customer_id, dedup_key FROM dedup WHERE first_seen < $1 LIMIT $2
)
"""


async def sweep(pool: asyncpg.Pool, first_seen_before: datetime, batch: int = 10_000) -> int:
    """Delete dedup records first seen before `first_seen_before`; returns how many."""
    deleted = 0
    while True:
        status = await pool.execute(_SWEEP_SQL, first_seen_before, batch)
        n = int(status.split()[-1])
        deleted += n
        if n < batch:
            return deleted
        await anyio.lowlevel.checkpoint()  # let other work in between batches
