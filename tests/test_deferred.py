"""Hours a fold of a backlog deferred (store/deferred.py): while they are marked, every answer
equals the one from the raw events alone; once rebuilt, the rollup tables and sketches are
exactly what folding every event as it came makes; an erasure in between is undone in both;
the rollup job rebuilds them by itself once the backlog is folded."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import anyio
import pytest
from prometheus_client import REGISTRY

from analytics.api.groups import combine, estimated
from analytics.normalize import hll_standard_error
from analytics.pipeline.rollup_job import RollupJob
from analytics.settings import DEFAULT_DIMENSIONS
from analytics.store.deferred import Rebuilder, marked_hours
from analytics.store.erase import erase_user
from analytics.store.rollups import FOLD_MAX_EVENTS, Folder, pending_events
from analytics.store.series import MetricsQuery, fetch_series
from analytics.store.sketches import inline
from analytics.store.uniques import fetch_uniques
from test_rollups import (
    COUNTRIES,
    DAYS,
    START,
    check_every_shape,
    march_pool,
    random_events,
    store,
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


async def test_an_erasure_while_hours_are_marked_is_gone_from_the_rebuilt_rollups(pool):
    await store(pool, random_events(random.Random(43), 500))
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 100) > 0
        erased = await erase_user(conn, 1, "u3", DEFAULT_DIMENSIONS)
        assert erased.events > 50
        await check_every_shape(pool)
        await rebuild_all(conn)
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)


async def test_unique_users_of_marked_hours_are_estimated_from_their_raw_events(pool):
    rng = random.Random(47)
    rows = []
    for i in range(6000):
        ts = START + timedelta(seconds=rng.randrange(DAYS * 86400))
        props = {"country": rng.choice(COUNTRIES)} if rng.random() < 0.8 else {}
        rows.append((1, ts, "buy", f"u-{i}", ts, f"user-{rng.randrange(3000)}", None,
                     json.dumps(props), 0))  # fmt: skip
    await store(pool, rows)
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 2000) > 0
    end = START + timedelta(days=DAYS)
    error = hll_standard_error()
    for q in (
        MetricsQuery(1, "buy", "day", START, end, "unique_users"),
        MetricsQuery(1, "buy", "day", START, end, "unique_users", group_by="country"),
    ):
        uniques = await fetch_uniques(pool, q, 30.0, exact_below=0)
        assert uniques is not None and uniques.raw  # the marked hours' users
        times = [START + timedelta(days=i) for i in range(DAYS)]
        got = {g.group: g.values(q.agg) for g in estimated(uniques, times, q)}
        exact = {g.group: g.values(q.agg) for g in
                 combine(await fetch_series(pool, q, 30.0), times, q)}  # fmt: skip
        assert got.keys() == exact.keys()
        for group, points in exact.items():
            for want, estimate in zip(points, got[group], strict=True):
                assert abs(estimate - want) <= 4 * error * want + 1, (q, group)


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
    """With a minute horizon (every event here is older), a caught-up fold adds its events to
    the hour rollups and a backlog's folds mark them for the rebuild: both end with every
    event in the hour rollups, and the same hour and pair rows."""
    await store(pool, random_events(random.Random(59), 700))
    async with pool.acquire() as conn:
        await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, minute_horizon_h=25), max_events)
        assert (await marked_hours(conn) > 0) == (max_events < 700)
        await check_every_shape(pool)
        await rebuild_all(conn)
    await check_every_shape(pool)
    assert await pool.fetchval("SELECT count(*) FROM rollup_minute") == 0
    total = await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''")
    assert total == 700
    got = await tables(pool)
    want = await refold_without_deferring(pool)
    for table in ("rollup_hour", "rollup_pair_hour", "rollup_users_hour"):
        assert got[table] == want[table]


async def test_a_few_late_events_of_full_hours_are_folded_as_they_come(pool):
    """A backlog's fold defers an old hour only when it brings a good share of the hour's
    events (`DEFER_SHARE`): a trickle of late events into hours already folded is added to
    their rollups at once, since a rebuild would read each whole hour again for them."""
    rng = random.Random(61)
    await store(pool, random_events(rng, 4000))
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, defer=False), 10_000) == 0
        late = random_events(rng, 100)
        await store(pool, [(*r[:3], f"late-{i}", *r[4:]) for i, r in enumerate(late)])
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 30) == 0  # a backlog
        assert await marked_hours(conn) == 0
    await check_every_shape(pool)
    total = await pool.fetchval("SELECT sum(count) FROM rollup_hour WHERE dim = ''")
    assert total == 4100


async def test_a_backfill_into_hours_already_full_is_deferred_whole(pool):
    """A fold mostly of old events (`BACKFILL_*`) marks every old hour it touches, however
    many events the hour holds already: the rebuild reads each once, instead of each fold
    adding a few events to rows of their own."""
    rng = random.Random(67)
    await store(pool, random_events(rng, 4000))
    async with pool.acquire() as conn:
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS, defer=False), 10_000) == 0
        more = random_events(rng, 2500)
        await store(pool, [(*r[:3], f"more-{i}", *r[4:]) for i, r in enumerate(more)])
        assert await fold_backlog(conn, Folder(DEFAULT_DIMENSIONS), 2500) > 100
        await check_every_shape(pool)
        await rebuild_all(conn, max_hours=50)
    await check_every_shape(pool)
    assert await tables(pool) == await refold_without_deferring(pool)
