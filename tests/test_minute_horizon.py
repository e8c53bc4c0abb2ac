"""Minute rollups kept only from the minute horizon on (migration 0008): the rollup job writes
no minute row for an older event, moves the horizon forward and sweeps the rows left below
it, and a minute query whose range crosses the horizon still equals the answer from the
raw events alone, whatever the job has folded or swept so far."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from analytics.settings import DEFAULT_DIMENSIONS
from analytics.store.deferred import marked_hours
from analytics.store.partitions import ensure_partitions
from analytics.store.rollups import MIN_MINUTE_HORIZON_H, Folder
from analytics.store.series import MetricsQuery, fetch_series
from test_deferred import fold_backlog, rebuild_all, tables
from test_rollups import answer, store

pytestmark = pytest.mark.anyio

HORIZON_H = MIN_MINUTE_HORIZON_H


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pool(fresh_dsn):
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=3)
    async with pool.acquire() as conn:
        await ensure_partitions(conn, datetime.now(UTC))
    yield pool
    await pool.close()


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def recent_events(rng: random.Random, n: int, now: datetime, tag: str) -> list[tuple]:
    """Events over the last 30 hours: some on each side of a 25-hour horizon, a few in the
    minutes just around it."""
    boundary = _floor_hour(now - timedelta(hours=HORIZON_H))
    rows = []
    for i in range(n):
        if rng.random() < 0.2:  # the minutes around the boundary
            ts = boundary + timedelta(seconds=rng.randrange(-180, 180))
        else:
            ts = now - timedelta(seconds=rng.randrange(1, 30 * 3600))
        props = {"path": rng.choice(["/a", "/b"])} if rng.random() < 0.8 else {}
        if rng.random() < 0.6:
            props["country"] = rng.choice(["DE", "US"])
        rows.append((1, ts, "buy", f"{tag}{i}", ts, f"u{i % 5}",
                     rng.choice([None, 2.0]), json.dumps(props), 0))  # fmt: skip
    return rows


def minute_shapes(now: datetime) -> list[MetricsQuery]:
    """Minute queries of up to 25 h: across the horizon, entirely before it, after it."""
    boundary = _floor_hour(now - timedelta(hours=HORIZON_H))
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    ranges = [
        (end - timedelta(hours=25), end),  # across the boundary
        (boundary - timedelta(minutes=7), boundary + timedelta(minutes=5)),  # just around it
        (boundary - timedelta(hours=4), boundary),  # entirely before it
        (boundary, boundary + timedelta(hours=2)),  # from it on
    ]
    out = []
    for (start, stop), agg, group_by, filters in itertools.product(
        ranges, ("count", "sum"), (None, "path"), ((), (("country", "DE"),))
    ):
        out.append(MetricsQuery(1, "buy", "minute", start, stop, agg, group_by, filters))
    return out


async def check_minutes(pool: asyncpg.Pool, now: datetime) -> None:
    for q in minute_shapes(now):
        got = answer(await fetch_series(pool, q, 30.0), q)
        want = answer(await fetch_series(pool, q, 30.0, rollups=False), q)
        assert got == want, q


async def minute_rows(pool: asyncpg.Pool) -> tuple[int, datetime | None]:
    row = await pool.fetchrow("SELECT count(*), min(bucket) FROM rollup_minute")
    return row[0], row[1]


async def test_minute_rollups_begin_at_the_horizon_and_minute_queries_stay_exact(pool):
    now = datetime.now(UTC)
    rng = random.Random(41)
    # Folded as they come (600 old events would be a backfill's, whose hours a fold defers:
    # tests/test_deferred.py checks the horizon with those).
    folder = Folder(DEFAULT_DIMENSIONS, minute_horizon_h=HORIZON_H, defer=False)
    await store(pool, recent_events(rng, 600, now, "a"))
    await check_minutes(pool, now)  # nothing folded
    async with pool.acquire() as conn:
        assert (await folder.fold(conn, 30.0)).events == 600
    since = await pool.fetchval("SELECT minute_since FROM rollup_state")
    boundary = _floor_hour(now - timedelta(hours=HORIZON_H))
    assert since in (boundary, boundary + timedelta(hours=1))  # (the hour may have turned)
    count, oldest = await minute_rows(pool)
    assert count and oldest >= since  # no minute row for an event before the horizon
    # The minute rollups from the horizon on equal what the raw events there make.
    table = await pool.fetch(
        "SELECT dim_value, bucket, count FROM rollup_minute WHERE dim = 'path' ORDER BY 1, 2"
    )
    raw = await pool.fetch(
        "SELECT properties->>'path', date_trunc('minute', ts, 'UTC'), count(*) FROM events"
        " WHERE properties ? 'path' AND ts >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
        since,
    )
    assert [tuple(r) for r in table] == [tuple(r) for r in raw]
    # The hour rollups still hold every event.
    assert await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''") == 600
    await check_minutes(pool, now)
    # Half folded: new events on both sides wait above the watermark.
    await store(pool, recent_events(rng, 300, now, "b"))
    await check_minutes(pool, now)
    async with pool.acquire() as conn:
        assert (await folder.fold(conn, 30.0)).events == 300
    assert (await minute_rows(pool))[1] >= since
    await check_minutes(pool, now)


async def test_minute_rows_made_before_the_horizon_moved_are_swept_and_never_read(pool):
    """Rows folded with no horizon (as an older release kept them) are left below it when
    it moves: queries read raw events there at once, and the job deletes them an hour of
    rows per fold."""
    now = datetime.now(UTC)
    await store(pool, recent_events(random.Random(43), 600, now, "c"))
    async with pool.acquire() as conn:
        # No horizon: every minute row (and folded as they come, as that release did).
        await Folder(DEFAULT_DIMENSIONS, defer=False).fold(conn, 30.0)
    assert not await pool.fetchval("SELECT isfinite(minute_since) FROM rollup_state")
    before, oldest = await minute_rows(pool)
    boundary = _floor_hour(now - timedelta(hours=HORIZON_H))
    assert oldest < boundary
    await check_minutes(pool, now)
    # The horizon moves and sweeps the oldest hour of rows below it (not all at once: the
    # events reach 5 hours back before the boundary).
    await pool.execute("UPDATE rollup_state SET minute_since = $1", boundary)
    await check_minutes(pool, now)  # rows below the horizon are no longer read
    folder, steps = Folder(DEFAULT_DIMENSIONS, minute_horizon_h=HORIZON_H), 0
    while (await minute_rows(pool))[1] < boundary:
        async with pool.acquire() as conn:
            await folder.fold(conn, 30.0)
        steps += 1
        await check_minutes(pool, now)
        assert steps < 10
    assert steps > 1
    count, oldest = await minute_rows(pool)
    assert 0 < count < before and oldest >= boundary
    above = await pool.fetchval(
        "SELECT count(*) FROM events WHERE ts >= $1 AND properties ? 'path'", boundary
    )
    assert await pool.fetchval("SELECT sum(count) FROM rollup_minute WHERE dim = 'path'") == above


async def test_hours_a_backlog_deferred_get_their_minute_rows_from_the_rebuild(pool):
    """A backlog's folds leave the minute rows of the hours they mark out too: minute queries
    read those hours from the raw events meanwhile, and the rebuild writes their minute rows
    from the horizon on, the rows folding every event as it came makes."""
    now = datetime.now(UTC)
    await store(pool, recent_events(random.Random(79), 900, now, "m"))
    folder = Folder(DEFAULT_DIMENSIONS, minute_horizon_h=HORIZON_H)
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, folder, 150) > 0
        since = await conn.fetchval("SELECT minute_since FROM rollup_state")
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty WHERE hour >= $1", since)
        in_marked = await conn.fetchval(
            "SELECT count(*) FROM rollup_minute m JOIN rollup_dirty d USING (customer_id, name)"
            " WHERE d.hour = date_trunc('hour', m.bucket, 'UTC')"
        )
        assert in_marked == 0
        await check_minutes(pool, now)
        await rebuild_all(conn, max_hours=10)
        assert await marked_hours(conn) == 0
    await check_minutes(pool, now)
    got = await tables(pool)
    async with pool.acquire() as conn:  # the same events, folded as they came
        await conn.execute(
            "TRUNCATE rollup_minute, rollup_hour, rollup_pair_hour, rollup_users_hour;"
            " UPDATE rollup_state SET watermark = '3'"
        )
        refolder = Folder(DEFAULT_DIMENSIONS, minute_horizon_h=HORIZON_H, defer=False)
        await fold_backlog(conn, refolder, 150)
        # (Should the hour have turned meanwhile, the horizon moved: rows from it on.)
        since = await conn.fetchval("SELECT minute_since FROM rollup_state")
    want = await tables(pool)
    for t in (got, want):
        t["rollup_minute"] = [r for r in t["rollup_minute"] if r[4] >= since]
    assert got == want
