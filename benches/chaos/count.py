"""What was stored, counted directly in PostgreSQL, and what billing was told, from the stub.

`stored` reads the `events` table itself (rows per event id) and what a query counts for the
experiment's event name (the minute rollups' total, `dim = ''`, plus the events the rollup
job has not folded yet); `billed` reads the stub's `/usage` totals.
Both block (each opens its own connection or request): call them between experiments, not
on an event loop.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import anyio
import asyncpg
import httpx2 as httpx

ROWS_PER_ID = """
SELECT event_id, count(*) AS n FROM events
WHERE customer_id = $1 AND name = $2 GROUP BY event_id
"""
# What a query counts: the rollups (events the rollup job has folded) plus the events above
# its watermark, in one statement (one snapshot).
ROLLUP_TOTAL = """
SELECT (SELECT coalesce(sum(count), 0)::bigint FROM rollup_minute
        WHERE customer_id = $1 AND name = $2 AND dim = '')
     + (SELECT count(*) FROM events WHERE customer_id = $1 AND name = $2
        AND xid >= (SELECT watermark FROM rollup_state))
"""
STORED_TOTAL = "SELECT count(*) FROM events WHERE customer_id = $1"


@dataclass(frozen=True)
class Stored:
    """Rows per event id, and the rollups' count total, for one event name."""

    rows: dict[str, int]
    rollup: int

    @property
    def distinct(self) -> int:
        return len(self.rows)

    @property
    def doubled(self) -> int:
        """Events stored more than once (each extra row), plus rollup counts above the
        distinct stored events (an event rolled up twice)."""
        extra_rows = sum(n - 1 for n in self.rows.values() if n > 1)
        return extra_rows + max(0, self.rollup - self.distinct)

    def lost(self, acked: set[str]) -> int:
        """Acknowledged events with no row."""
        return sum(1 for eid in acked if eid not in self.rows)


def stored(dsn: str, customer_id: int, name: str) -> Stored:
    """Count what PostgreSQL holds for `name` (blocking)."""

    async def go() -> Stored:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(ROWS_PER_ID, customer_id, name)
            rollup = await conn.fetchval(ROLLUP_TOTAL, customer_id, name)
        finally:
            await conn.close()
        return Stored(Counter({r["event_id"]: r["n"] for r in rows}), rollup)

    return anyio.run(go)


def events_of(dsn: str, customer_id: int) -> int:
    """Every event row of the customer (what billing must have been told, in all)."""

    async def go() -> int:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval(STORED_TOTAL, customer_id)
        finally:
            await conn.close()

    return anyio.run(go)


def billed(stub_url: str, customer_id: int) -> int:
    """The usage billing recorded for the customer."""
    totals = httpx.get(f"{stub_url}/usage", timeout=5).json()
    return int(totals["customers"].get(str(customer_id), 0))


def wait_billed(
    stub_url: str, customer_id: int, expected: int, timeout_s: float, settle_s: float = 1.0
) -> tuple[int, float | None]:
    """Poll the stub until it holds `expected` usage for the customer or `timeout_s` passed;
    once it does, read again after `settle_s`, so that a late resend counted twice shows.
    The last total seen, and the seconds it took to reach `expected` (None if it did not)."""
    started = time.monotonic()
    total = billed(stub_url, customer_id)
    while total < expected and time.monotonic() < started + timeout_s:
        time.sleep(0.25)
        total = billed(stub_url, customer_id)
    if total != expected:
        return total, None
    reached = time.monotonic() - started
    time.sleep(settle_s)
    return billed(stub_url, customer_id), reached
