"""Hours a fold of a backlog deferred (store/deferred.py): while they are marked, every answer
equals the one from the raw events alone; once rebuilt, the rollup tables and sketches are
exactly what folding every event as it came makes; an erasure in between is undone in both;
the rollup job rebuilds them by itself once the backlog is folded."""

from __future__ import annotations

import random
from datetime import timedelta

import anyio
import pytest
from prometheus_client import REGISTRY

from analytics.pipeline.rollup_job import RollupJob
from analytics.settings import DEFAULT_DIMENSIONS
from analytics.store.deferred import Rebuilder, marked_hours
from analytics.store.erase import erase_user
from analytics.store.rollups import BACKFILL_EVENTS, FOLD_MAX_EVENTS, Folder, pending_events
from analytics.store.series import MetricsQuery
from analytics.store.sketches import inline
from test_rollups import (
    DAYS,
    START,
    check_estimates,
    check_every_shape,
    march_pool,
    random_events,
    store,
    user_events,
)

pytestmark = pytest.mark.anyio

TABLES = {
    "rollup_minute": "customer_id, name, dim, dim_value, bucket",
    "rollup_hour": "customer_id, name, dim, dim_value, bucket",
    "rollup_pair_hour": "customer_id, name, dim_a, dim_b, value_a, value_b, bucket",
    "rollup_users_hour": "customer_id, name, dim, dim_value, bucket",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pool(fresh_dsn):
    async with march_pool(fresh_dsn) as pool:
        yield pool


async def fold_backlog(conn, folder: Folder, max_events: int) -> int:
    """Fold everything pending, `max_events` at a time; the hours marked on the way."""
    deferred = 0
    while True:
        folded = await folder.fold(conn, 30.0, max_events=max_events)
        deferred += folded.deferred
        if not folded.more:
            return deferred


async def rebuild_all(conn, max_hours: int = 7) -> int:
    rebuilder, hours = Rebuilder(DEFAULT_DIMENSIONS), 0
    while True:
        rebuilt = await rebuilder.rebuild(conn, 30.0, inline, max_hours)
        hours += rebuilt.hours
        if not rebuilt.more:
            return hours


async def folded_then_more(pool, conn, rng: random.Random, more: int) -> None:
    """4,000 events folded as they came (nothing deferred), then `more` stored, unfolded."""
    await store(pool, random_events(rng, 4000))
    assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, defer=False), 10_000) == 0
    rows = random_events(rng, more)
    await store(pool, [(*r[:3], f"more-{i}", *r[4:]) for i, r in enumerate(rows)])


async def tables(pool) -> dict[str, list[tuple]]:
    out = {}
    for table, key in TABLES.items():
        rows = await pool.fetch(f"SELECT * FROM {table} ORDER BY {key}")
        out[table] = [tuple(r) for r in rows]
    return out


async def refold_without_deferring(pool) -> dict[str, list[tuple]]:
    """The rollups of the same events, each folded as it comes (nothing deferred)."""
    async with pool.acquire() as conn:
        await conn.execute(
            "TRUNCATE rollup_minute, rollup_hour, rollup_pair_hour, rollup_users_hour,"
            " rollup_dirty; UPDATE rollup_state SET watermark = '3'"
        )
        await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, defer=False), 150)
        assert await marked_hours(conn) == 0
    return await tables(pool)


async def test_deferred_hours_answer_from_raw_events_then_rebuild_to_what_folding_makes(pool):
    rng = random.Random(41)
    await store(pool, random_events(rng, 600))
    async with pool.acquire() as conn:
        deferred = await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 150)
    marked = await marked_hours(pool)
    assert deferred == marked > 50  # every fold but the last took 150 of them
    assert await pending_events(pool) == 0
    await check_every_shape(pool)  # hours marked: read from raw events
    # More events, some in marked hours, folded as they come (no backlog), some not yet.
    await store(pool, random_events(rng, 100))
    async with pool.acquire() as conn:
        assert (await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)).deferred == 0
    await store(pool, random_events(rng, 50))
    await check_every_shape(pool)
    async with pool.acquire() as conn:
        assert await rebuild_all(conn) == marked
        assert await marked_hours(conn) == 0
        await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)


async def test_an_erasure_while_hours_are_marked_is_gone_from_the_rebuilt_rollups(pool, caplog):
    await store(pool, random_events(random.Random(43), 500))
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 100) > 0
        assert await conn.fetchval("SELECT bool_and(bare) FROM rollup_dirty")  # no rows yet
        await conn.execute(U3_HOURS)
        erased = await erase_user(conn, 1, "u3", DEFAULT_DIMENSIONS)
        assert erased.events > 50
        # The hours it subtracted from (and rebuilt the sketches of) may have rows now.
        bare = "SELECT count(*) FROM rollup_dirty WHERE bare AND (name, hour) {} (TABLE u3_hours)"
        assert await conn.fetchval(bare.format("IN")) == 0
        assert await conn.fetchval(bare.format("NOT IN")) > 0
        await check_every_shape(pool)
        await rebuild_all(conn)
    assert BARE_CONFLICT not in caplog.text  # each hour rebuilt the way its mark said
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)


#: The hours of user u3's events, kept before they are erased.
U3_HOURS = """CREATE TEMP TABLE u3_hours AS SELECT DISTINCT name, date_trunc('hour', ts, 'UTC')
    FROM events WHERE user_id = 'u3'"""
BARE_CONFLICT = "a bare hour had rollup rows"


async def test_a_bare_mark_over_rows_falls_back_to_upserts(pool, caplog):
    """Should a mark say bare over an hour that has rows after all, its rebuild's inserts
    conflict: it is rebuilt with the upserts instead, and the rollups are still exact."""
    async with pool.acquire() as conn:
        await folded_then_more(pool, conn, random.Random(71), 2500)
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 2500) > 100
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty WHERE NOT bare") > 50
        await conn.execute("UPDATE rollup_dirty SET bare = true")
        await rebuild_all(conn, max_hours=50)
    assert BARE_CONFLICT in caplog.text
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)


async def test_unique_users_of_marked_hours_are_estimated_from_their_raw_events(pool):
    await store(pool, user_events(47))
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 2000) > 0
    end = START + timedelta(days=DAYS)
    for q in (
        MetricsQuery(1, "buy", "day", START, end, "unique_users"),
        MetricsQuery(1, "buy", "day", START, end, "unique_users", group_by="country"),
    ):
        await check_estimates(pool, q)  # the marked hours' users read raw


async def test_the_job_rebuilds_the_hours_a_backlog_deferred(pool):
    await store(pool, random_events(random.Random(53), 5000))
    job = RollupJob(pool, DEFAULT_DIMENSIONS, interval_s=0.05)
    before = REGISTRY.get_sample_value("analytics_rollup_hours_rebuilt_total") or 0.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(job.run)
        with anyio.fail_after(60):
            while True:
                if not (await pending_events(pool) or await marked_hours(pool)):
                    break
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    # The first folds (2,000 of 5,000 events: a backlog) deferred hours, rebuilt since.
    rebuilt = (REGISTRY.get_sample_value("analytics_rollup_hours_rebuilt_total") or 0) - before
    assert rebuilt > 50
    await check_every_shape(pool)
    total = await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''")
    assert total == 5000


@pytest.mark.parametrize("max_events", [FOLD_MAX_EVENTS, 150], ids=["caught-up", "backlog"])
async def test_events_below_the_minute_horizon_reach_the_hour_rollups_either_way(pool, max_events):
    """With a minute horizon (every event here is older), a caught-up fold of fewer old
    events than a backfill's (`BACKFILL_EVENTS`) adds them to the hour rollups and a
    backlog's folds mark them for the rebuild: both end with every event in the hour
    rollups, and the same hour and pair rows."""
    assert 400 < BACKFILL_EVENTS
    await store(pool, random_events(random.Random(59), 400))
    async with pool.acquire() as conn:
        await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, minute_horizon_h=25), max_events)
        assert (await marked_hours(conn) > 0) == (max_events < 400)
        await check_every_shape(pool)
        await rebuild_all(conn)
    await check_every_shape(pool)
    assert await pool.fetchval("SELECT count(*) FROM rollup_minute") == 0
    total = await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''")
    assert total == 400
    got = await tables(pool)
    want = await refold_without_deferring(pool)
    for table in ("rollup_hour", "rollup_pair_hour", "rollup_users_hour"):
        assert got[table] == want[table]


async def test_a_caught_up_fold_of_a_backfill_defers_its_hours_bare(pool):
    """A fold that takes every pending event, most of them old and at least
    `BACKFILL_EVENTS`, is a backfill's first: it marks its hours before any of their rows
    exists, so each is rebuilt with inserts."""
    await store(pool, random_events(random.Random(73), BACKFILL_EVENTS + 100))
    async with pool.acquire() as conn:
        folded = await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)
        assert not folded.more and folded.deferred > 50
        assert await conn.fetchval("SELECT bool_and(bare) FROM rollup_dirty")
        assert await conn.fetchval("SELECT count(*) FROM rollup_hour") == 0
        await check_every_shape(pool)
        await rebuild_all(conn, max_hours=100)
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)


async def test_a_few_late_events_of_full_hours_are_folded_as_they_come(pool):
    """A backlog's fold defers an old hour only when it brings a good share of the hour's
    events (`DEFER_SHARE`): a trickle of late events into hours already folded is added to
    their rollups at once, since a rebuild would read each whole hour again for them."""
    async with pool.acquire() as conn:
        await folded_then_more(pool, conn, random.Random(61), 100)
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 30) == 0  # a backlog
        assert await marked_hours(conn) == 0
    await check_every_shape(pool)
    total = await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''")
    assert total == 4100


async def test_a_backfill_into_hours_already_full_is_deferred_whole(pool):
    """A fold mostly of old events (`BACKFILL_*`) marks every old hour it touches, however
    many events the hour holds already: the rebuild reads each once, instead of each fold
    adding a few events to rows of their own."""
    async with pool.acquire() as conn:
        await folded_then_more(pool, conn, random.Random(67), 2500)
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 2500) > 100
        await check_every_shape(pool)
        await rebuild_all(conn, max_hours=50)
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)
