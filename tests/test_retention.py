"""Event retention on a real PostgreSQL: monthly partitions made in the past, dropped whole
once they lie entirely before the cutoff, their rollups deleted in batches first."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from analytics.pipeline.maintenance import _months_back, apply_retention, run_maintenance
from analytics.settings import Settings
from analytics.store.partitions import ensure_partitions
from analytics.store.pool import connect, create_pool
from analytics.store.retention import Partition, delete_rollups, drop_partition, monthly_partitions

pytestmark = pytest.mark.anyio

JAN, FEB, MAR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3))
OLD = datetime(2023, 6, 15, tzinfo=UTC)  # no partition: the default one holds it


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(Settings(database_url=fresh_dsn, pool_min_size=1, pool_max_size=4))
    yield pool
    await pool.close()


async def seed(pool: asyncpg.Pool) -> None:
    """Partitions for Jan-Apr 2024; per month and customer, events and rollups (12 rollup
    rows: 2 customers x 2 names x 3 minutes); the same in the default partition (2023)."""
    async with pool.acquire() as conn:
        assert await ensure_partitions(conn, FEB, months_back=1, months_ahead=2) == [
            "events_y2024m01", "events_y2024m02", "events_y2024m03", "events_y2024m04"]  # fmt: skip
    for month in (OLD, JAN + timedelta(days=9), FEB + timedelta(days=9), MAR + timedelta(days=9)):
        for customer in (1, 2):
            for name in ("a", "b"):
                for minute in range(3):
                    ts = month + timedelta(minutes=minute)
                    await pool.execute(
                        "INSERT INTO events (customer_id, ts, name, dedup_key, received_at,"
                        " properties, flags) VALUES ($1, $2, $3, $4, $2, '{}', 0)",
                        customer, ts, name, f"k{ts.timestamp()}{name}",
                    )  # fmt: skip
                    await pool.execute(
                        "INSERT INTO rollup_minute VALUES ($1, $2, '', '', $3, 1, 1)",
                        customer, name, ts,
                    )  # fmt: skip


async def months(pool: asyncpg.Pool, table: str, column: str) -> dict[str, int]:
    rows = await pool.fetch(
        f"SELECT to_char({column}, 'YYYY-MM') AS m, count(*) AS n FROM {table} GROUP BY 1"
    )
    return {r["m"]: r["n"] for r in rows}


async def test_partitions_entirely_before_the_cutoff_are_dropped_with_their_rollups(pool):
    await seed(pool)
    # Cutoff 2024-02-19: January ends before it; February does not (its end is March 1).
    dropped = await apply_retention(pool, MAR + timedelta(days=19), timedelta(days=30), batch=5)
    assert dropped == ["events_y2024m01"]
    async with pool.acquire() as conn:
        left = [p.name for p in await monthly_partitions(conn)]
    assert left == ["events_y2024m02", "events_y2024m03", "events_y2024m04"]
    assert await pool.fetchval("SELECT to_regclass('events_y2024m01')") is None  # dropped
    assert await months(pool, "events", "ts") == {"2023-06": 12, "2024-02": 12, "2024-03": 12}
    # The rollups of the dropped range only: the default partition's events keep theirs.
    assert await months(pool, "rollup_minute", "bucket") == {
        "2023-06": 12, "2024-02": 12, "2024-03": 12}  # fmt: skip

    # Nothing more to do at the same time; a month later February goes too.
    assert await apply_retention(pool, MAR + timedelta(days=19), timedelta(days=30)) == []
    later = await apply_retention(pool, MAR + timedelta(days=31), timedelta(days=30))
    assert later == ["events_y2024m02"]
    assert await months(pool, "rollup_minute", "bucket") == {"2023-06": 12, "2024-03": 12}


async def test_zero_retention_keeps_everything(pool):
    await seed(pool)
    assert await apply_retention(pool, datetime(2030, 1, 1, tzinfo=UTC), timedelta(0)) == []
    assert await pool.fetchval("SELECT count(*) FROM events") == 48


async def test_rollups_are_deleted_in_batches_walking_the_key_once(pool):
    await seed(pool)
    january = await pool.fetch("SELECT * FROM rollup_minute WHERE bucket >= $1 AND bucket < $2",
                               JAN, FEB)  # fmt: skip
    assert len(january) == 12
    for batch in (1, 5, 12, 13, 10_000):  # every batch boundary: none lost, none twice
        await pool.executemany(
            "INSERT INTO rollup_minute VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            [tuple(r) for r in january],
        )
        assert await delete_rollups(pool, JAN, FEB, batch) == 12
        assert await months(pool, "rollup_minute", "bucket") == {
            "2023-06": 12, "2024-02": 12, "2024-03": 12}  # fmt: skip


async def test_a_busy_events_table_makes_the_drop_give_up_until_later(pool, fresh_dsn):
    await seed(pool)
    jan = Partition("events_y2024m01", JAN, FEB)
    holder = await connect(fresh_dsn, Settings())
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT count(*) FROM events")  # a reader's lock, kept
        async with pool.acquire() as conn:
            with anyio.fail_after(5):
                assert not await drop_partition(conn, jan, lock_timeout_s=0.1)
        assert await pool.fetchval("SELECT to_regclass('events_y2024m01') IS NOT NULL")
        await tx.rollback()
    finally:
        await holder.close()
    async with pool.acquire() as conn:
        assert await drop_partition(conn, jan)
        assert not await drop_partition(conn, jan)  # gone already


def test_the_partition_upkeep_does_not_recreate_what_retention_drops():
    now = datetime(2024, 3, 10, tzinfo=UTC)
    assert _months_back(now, timedelta(0)) == 1  # forever: last month as usual
    assert _months_back(now, timedelta(days=5)) == 0  # cutoff Mar 5: February is dropped
    assert _months_back(now, timedelta(days=9)) == 0  # cutoff Mar 1, February's end
    assert _months_back(now, timedelta(days=10)) == 1  # cutoff Feb 29: February is kept


async def test_the_hourly_job_applies_the_retention_it_is_given(pool):
    await seed(pool)
    keep = timedelta(days=400)  # from now (2026+): all of 2024
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(run_maintenance, pool, timedelta(days=8), events_retention=keep)
        )
        sql = "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_y2024%'"
        with anyio.fail_after(30):
            while await pool.fetchval(sql):  # noqa: ASYNC110 (the database, polled)
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert await months(pool, "events", "ts") == {"2023-06": 12}  # the default partition's
    assert await months(pool, "rollup_minute", "bucket") == {"2023-06": 12}
