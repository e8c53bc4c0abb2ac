"""The rollup job and the queries over it: whatever the job has folded so far, every answer
equals the one computed from the raw events alone, at every grain, for every query shape
the rollups serve; the rollup tables equal what the raw events make; the groups of an answer
add up to its total."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from analytics.api.groups import combine, estimated, rank
from analytics.normalize import hll_standard_error
from analytics.settings import DEFAULT_DIMENSIONS
from analytics.store.citus import is_citus
from analytics.store.deferred import Rebuilder, marked_hours
from analytics.store.migrations import load_migrations, migrate
from analytics.store.partitions import ensure_partitions
from analytics.store.rollups import Folder, pending_events
from analytics.store.series import INTERVALS, MetricsQuery, fetch_series
from analytics.store.sketches import inline
from analytics.store.uniques import fetch_uniques
from dbutil import apply_migrations

pytestmark = pytest.mark.anyio

START = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 3
PATHS, COUNTRIES = ["/a", "/b", "/c"], ["DE", "US"]
UAS = ["Mozilla/5.0 Firefox/120.0", "Mozilla/5.0 Chrome/120.0 Safari/537.36", None]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def march_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `dsn` with the events' partition of the month the tests' events are in."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE events_2026_03 PARTITION OF events"
            " FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')"
        )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def pool(fresh_dsn):
    async with march_pool(fresh_dsn) as pool:
        yield pool


def random_events(rng: random.Random, n: int) -> list[tuple]:
    rows = []
    for i in range(n):
        props: dict[str, object] = {}
        if rng.random() < 0.8:  # some events lack a dimension: the None group
            props["path"] = rng.choice(PATHS)
        if rng.random() < 0.7:
            props["country"] = rng.choice(COUNTRIES)
        if ua := rng.choice(UAS):
            props["user_agent"] = ua
        if rng.random() < 0.3:
            props["utm.source"] = rng.choice(["ads", "mail"])  # stored flattened
        ts = START + timedelta(seconds=rng.randrange(DAYS * 86400))
        value = rng.choice([None, 1.5, 2.0, -3.25])
        name = rng.choice(["buy", "view"])
        rows.append((1, ts, name, f"k{i}", ts, f"u{i % 7}", value, json.dumps(props), 0))
    return rows


async def store(pool: asyncpg.Pool, rows: list[tuple]) -> None:
    await pool.executemany(
        "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, user_id, value,"
        " properties, flags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)",
        rows,
    )


def shapes() -> list[MetricsQuery]:
    """Every shape rollups answer (and a few they do not), at each grain."""
    groupings = [None, "path", "country", "browser"]
    filter_sets = [(), (("country", "DE"),), (("path", "/a"),), (("country", "US"), ("path", "/b"))]
    out = []
    for interval, agg, group_by, filters in itertools.product(
        INTERVALS, ("count", "sum"), groupings, filter_sets
    ):
        out.append(
            MetricsQuery(
                1, "buy", interval, START, START + timedelta(days=DAYS), agg, group_by, filters
            )
        )
    return out


def answer(rows, q: MetricsQuery) -> dict:
    steps = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
    n = (q.end - q.start) // steps[q.interval]
    times = [q.start + i * steps[q.interval] for i in range(n)]
    return {
        (g.group, g.other): [round(v, 9) for v in g.values(q.agg)]
        for g in rank(combine(rows, times, q), 100, q.agg)
    }


async def check_every_shape(pool: asyncpg.Pool) -> int:
    served = 0
    for q in shapes():
        got = answer(await fetch_series(pool, q, 30.0), q)
        want = answer(await fetch_series(pool, q, 30.0, rollups=False), q)
        assert got == want, q
        served += q.uses_rollups
    return served


async def test_answers_equal_raw_events_however_far_the_job_has_folded(pool, fresh_dsn):
    rng = random.Random(3)
    folder = Folder(DEFAULT_DIMENSIONS)
    await store(pool, random_events(rng, 400))
    # Nothing folded: rollups are empty, raw events after the watermark answer.
    assert await check_every_shape(pool) > 60
    async with pool.acquire() as conn:
        folded = await folder.fold(conn, 30.0)
    assert folded is not None and folded.events == 400
    assert await pending_events(pool) == 0
    await check_every_shape(pool)
    # Half folded: new events wait above the watermark while the old ones are in rollups.
    await store(pool, random_events(rng, 300))
    assert await pending_events(pool) == 300
    await check_every_shape(pool)
    async with pool.acquire() as conn:
        assert (await folder.fold(conn, 30.0)).events == 300
        assert (await folder.fold(conn, 30.0)).events == 0
    await check_every_shape(pool)


async def test_an_open_transaction_holds_the_watermark_back_and_nothing_is_lost(pool):
    """Events of a transaction still open when the job folds are not folded (their xid is
    above the snapshot's xmin), and are folded, once, by a later fold after they commit."""
    rng = random.Random(5)
    folder = Folder(DEFAULT_DIMENSIONS)
    late = await pool.acquire()
    try:
        tx = late.transaction()
        await tx.start()
        await late.execute(
            "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, properties,"
            " flags) VALUES (1, $1, 'buy', 'late', $1, '{\"path\": \"/a\"}', 0)",
            START,
        )
        await store(pool, random_events(rng, 50))  # committed after the open one began
        async with pool.acquire() as conn:
            assert (await folder.fold(conn, 30.0)).events == 0  # xmin is the open one's xid
        await tx.commit()
    finally:
        await pool.release(late)
    async with pool.acquire() as conn:
        assert (await folder.fold(conn, 30.0)).events == 51
    await check_every_shape(pool)


async def test_rollup_tables_equal_what_the_raw_events_make(pool):
    await store(pool, random_events(random.Random(11), 500))
    async with pool.acquire() as conn:
        await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)
        # A backfill's fold (500 old events) marked its hours: rebuilt (none on Citus).
        while (await Rebuilder(DEFAULT_DIMENSIONS).rebuild(conn, 30.0, inline, 50)).more:
            pass
    for grain in ("minute", "hour"):
        table = await pool.fetch(
            f"SELECT name, dim_value, bucket, count FROM rollup_{grain}"
            " WHERE dim = 'path' ORDER BY 1, 2, 3"
        )
        raw = await pool.fetch(
            f"SELECT name, properties->>'path', date_trunc('{grain}', ts, 'UTC'), count(*)"
            " FROM events WHERE properties ? 'path' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        assert [tuple(r) for r in table] == [tuple(r) for r in raw]
    pairs = await pool.fetch(
        "SELECT name, value_a, value_b, bucket, count FROM rollup_pair_hour"
        " WHERE dim_a = 'country' AND dim_b = 'path' ORDER BY 1, 2, 3, 4"
    )
    raw = await pool.fetch(
        "SELECT name, properties->>'country', properties->>'path',"
        " date_trunc('hour', ts, 'UTC'), count(*) FROM events"
        " WHERE properties ? 'path' AND properties ? 'country'"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
    assert [tuple(r) for r in pairs] == [tuple(r) for r in raw]


async def test_groups_add_up_to_the_total_with_none_and_other(pool):
    await store(pool, random_events(random.Random(13), 300))
    async with pool.acquire() as conn:
        await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)
    end = START + timedelta(days=DAYS)
    total_q = MetricsQuery(1, "buy", "day", START, end)
    total = answer(await fetch_series(pool, total_q, 30.0), total_q)[(None, 0)]
    grouped_q = MetricsQuery(1, "buy", "day", START, end, group_by="path")
    rows = await fetch_series(pool, grouped_q, 30.0)
    times = [START + timedelta(days=i) for i in range(DAYS)]
    groups = rank(combine(rows, times, grouped_q), 2, "count")
    assert [g.group for g in groups[:2]] and groups[-1].other == 2  # 4 groups: 2 kept, 2 folded
    assert None in {g.group for g in combine(rows, times, grouped_q)}
    assert [sum(col) for col in zip(*(g.counts for g in groups), strict=True)] == total


def user_events(seed: int) -> list[tuple]:
    """6,000 events of 3,000 users over the days, 80 % of them with a country."""
    rng, rows = random.Random(seed), []
    for i in range(6000):
        ts = START + timedelta(seconds=rng.randrange(DAYS * 86400))
        props = {"country": rng.choice(COUNTRIES)} if rng.random() < 0.8 else {}
        rows.append((1, ts, "buy", f"u-{i}", ts, f"user-{rng.randrange(3000)}", None,
                     json.dumps(props), 0))  # fmt: skip
    return rows


async def check_estimates(pool: asyncpg.Pool, q: MetricsQuery) -> None:
    """The sketches' estimate of each bucket and group of `q` is within 4 standard errors
    of the exact count over the raw events, and raw users were read too."""
    end = START + timedelta(days=DAYS)
    uniques = await fetch_uniques(pool, q, 30.0, exact_below=0)
    assert uniques is not None and uniques.raw
    steps = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
    times = [START + i * steps[q.interval] for i in range((end - START) // steps[q.interval])]
    got = {g.group: g.values(q.agg) for g in estimated(uniques, times, q)}
    exact = {g.group: g.values(q.agg) for g in
             combine(await fetch_series(pool, q, 30.0), times, q)}  # fmt: skip
    assert got.keys() == exact.keys()
    if q.group_by:
        assert None in got  # the users of events without a country
    error = hll_standard_error()
    for group, points in exact.items():
        for want, estimate in zip(points, got[group], strict=True):
            assert abs(estimate - want) <= 4 * error * want + 1, (q, group)


async def test_unique_users_estimated_from_sketches_match_the_exact_count(pool):
    """Sketches folded in two rounds, plus events not folded yet, estimate each bucket's and
    group's distinct users within 4 standard errors of the exact count over raw events."""
    rows = user_events(17)
    folder = Folder(DEFAULT_DIMENSIONS)
    for part in (rows[:2000], rows[2000:4000]):
        await store(pool, part)
        async with pool.acquire() as conn:
            await folder.fold(conn, 30.0)
    await store(pool, rows[4000:])  # above the watermark: read as raw users
    end = START + timedelta(days=DAYS)
    for q in (
        MetricsQuery(1, "buy", "day", START, end, "unique_users"),
        MetricsQuery(1, "buy", "day", START, end, "unique_users", group_by="country"),
        MetricsQuery(1, "buy", "hour", START, end, "unique_users", filters=(("country", "DE"),)),
    ):
        await check_estimates(pool, q)


async def test_a_backlog_is_folded_in_bounded_transactions(pool):
    """Many small commits and one large one, folded at most 120 events at a time (the large
    transaction alone, since its events share one xid): every event is folded once, and the
    answers equal those from the raw events."""
    rng = random.Random(19)
    for _ in range(10):
        await store(pool, random_events(rng, 30))
    await store(pool, random_events(rng, 500))  # one transaction, more than the bound
    folder, folds, total = Folder(DEFAULT_DIMENSIONS), [], 0
    async with pool.acquire() as conn:
        while True:
            folded = await folder.fold(conn, 30.0, max_events=120)
            folds.append(folded.events)
            total += folded.events
            if not folded.more:
                break
    assert max(folds) == 500 and all(n <= 120 for n in folds if n != 500)
    assert total == 800 and await pending_events(pool) == 0
    await check_every_shape(pool)


async def test_the_fold_bound_orders_transaction_ids_as_numbers(pool):
    """Ids across a power of ten (7..12) sort as numbers, not as their text: the fold
    takes the oldest transactions first, and no more events than its bound. (The rows are
    given those ids, all long ended, and the watermark is set just below them.)"""
    rng = random.Random(23)
    rows = random_events(rng, 60)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE rollup_state SET watermark = '5'")
        for i, xid in enumerate(range(7, 13)):
            await conn.executemany(
                "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, user_id,"
                " value, properties, flags, xid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb,"
                f" $9, '{xid}')",
                rows[i * 10 : (i + 1) * 10],
            )
        folded = await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0, max_events=25)
    assert (folded.events, folded.watermark, folded.more) == (20, 9, True)


def test_events_from_before_the_rollup_job_are_refolded_in_bounded_folds(blank_dsn):
    """A database at migration 0003 (rollups written by the commit) with 5,000 events:
    migrated, its events are numbered in chunks of 2,000 and folded in three bounded folds
    (the hours the first two deferred then rebuilt), after which the hour rollups count every
    one of them."""
    before_0004 = [m for m in load_migrations() if m.version <= 3]  # reads files: not on a loop

    async def run() -> None:
        conn = await asyncpg.connect(blank_dsn)
        try:
            await apply_migrations(conn, before_0004)
            await ensure_partitions(conn, START)
            await conn.executemany(
                "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, user_id,"
                " value, properties, flags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)",
                random_events(random.Random(29), 5000),
            )
            await migrate(conn)
            folder, folds = Folder(DEFAULT_DIMENSIONS), []
            while True:
                folded = await folder.fold(conn, 60.0)
                folds.append(folded.events)
                if not folded.more:
                    break
            assert folds == [2000, 2000, 1000]
            # The first two (of a backlog) deferred their old hours: rebuilt once, after
            # (on Citus nothing is deferred).
            assert (await marked_hours(conn) > 0) is not await is_citus(conn)
            while (await Rebuilder(DEFAULT_DIMENSIONS).rebuild(conn, 60.0, inline, 50)).more:
                pass
            assert await marked_hours(conn) == 0
            total = await conn.fetchval(
                "SELECT sum(count) FROM rollup_hour WHERE dim = '' AND customer_id = 1"
            )
            assert total == 5000
        finally:
            await conn.close()

    anyio.run(run)
