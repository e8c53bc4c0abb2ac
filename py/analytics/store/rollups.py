"""Rollups, folded in bulk behind a watermark: the rollup job and its SQL.

The group commit stores raw events only (each with the id of its transaction, `xid`); the
job (`Folder.fold`, run every fraction of a second by one process at a time) takes every
event with `watermark <= xid < xmin`, where xmin is the oldest transaction still running
(all below it have ended, so that range is final), adds them to every rollup table, and
moves the watermark, in one transaction. Queries read the rollups plus the raw events at or
above the watermark in one snapshot (store/series.py), so an acknowledged event is in the
next answer whether the job has folded it or not.

The tables (migration 0004), all counts and sums:
- `rollup_minute`, `rollup_hour`: per (event name, dimension, value, bucket), one row per
  configured dimension plus the total (`dim = ''`); day queries sum hours;
- `rollup_pair_hour`: per pair of dimension values (`dim_a < dim_b`), for a filter together
  with a group-by, or two filters (hour and day queries).

On Citus, see `citus.settled` (and deploy/citus.md) for what xmin means there.

Folding many events at once is what makes this cheap: a second of events lands in one row
per (name, dimension value, minute), instead of one upsert per event and dimension at every
commit. Erasure (store/erase.py) subtracts with the same SQL (`fold_sql(sign=-1)`), holding
the job's lock so the watermark cannot move under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import combinations

import asyncpg

from analytics.store.citus import SEQUENTIAL_SQL, is_citus, settled
from analytics.store.dimensions import fresh_ctes
from analytics.store.identities import identity_join
from analytics.store.sketches import Cpu, inline, merge_users, users_json

#: Advisory lock held by the transaction folding events (and by an erasure): one at a time
#: across every process and host.
FOLD_LOCK = 0x726F6C6C7570  # "rollup"

SINGLE_GRAINS = ("minute", "hour")
PAIR_GRAINS = ("hour",)

SINGLE_KEY = ("customer_id", "name", "dim", "dim_value", "bucket")
PAIR_KEY = ("customer_id", "name", "dim_a", "dim_b", "value_a", "value_b", "bucket")


@dataclass(frozen=True)
class RollupTable:
    name: str
    grain: str
    key: tuple[str, ...]

    @property
    def pair(self) -> bool:
        return self.key is PAIR_KEY


ROLLUP_TABLES = (
    *(RollupTable(f"rollup_{g}", g, SINGLE_KEY) for g in SINGLE_GRAINS),
    *(RollupTable(f"rollup_pair_{g}", g, PAIR_KEY) for g in PAIR_GRAINS),
)


#: The unique users' sketches (store/sketches.py): keyed like a single rollup, written apart.
SKETCH_TABLE = RollupTable("rollup_users_hour", "hour", SINGLE_KEY)


def single_table(interval: str) -> str:
    """The single-value rollup table answering `interval` (days from hours)."""
    return f"rollup_{'minute' if interval == 'minute' else 'hour'}"


def pair_table(interval: str) -> str | None:
    """The pair rollup table answering `interval`; None for minutes (raw events do)."""
    return None if interval == "minute" else "rollup_pair_hour"


def pairs(dimensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every pair of configured dimensions, each in its stored order (dim_a < dim_b)."""
    return list(combinations(sorted(dimensions), 2))


def tables_for(dimensions: tuple[str, ...]) -> tuple[RollupTable, ...]:
    """The rollup tables a fold writes for these dimensions (no pairs below two)."""
    return tuple(t for t in ROLLUP_TABLES if not t.pair or pairs(dimensions))


#: Where minute rollups begin: rollup_minute holds every folded event from this time on,
#: and nothing a query reads before it (migration 0008; '-infinity' when kept for all).
MINUTE_SINCE = "SELECT minute_since FROM rollup_state"


def fold_sql(
    dimensions: tuple[str, ...],
    source: str,
    *,
    sign: int = 1,
    before: tuple[str, ...] = (),
    also: tuple[str, ...] = (),
    users: bool = False,
    defer: str | None = None,
    backlog: str = "true",
) -> str:
    """Add (sign 1) or subtract (sign -1) the events of `source` to every rollup table.

    `source` is the body of a CTE giving customer_id, name, ts, value, properties and flags
    of the events to fold. Rollups are upserted in key order, so a fold and an erasure lock
    rows in the same order. Returns one row: `events` (how many were folded) and, for a
    subtraction (sign -1), per table the rows left with a count of 0 or less as JSON
    (`emptied_<table>`, for the erasure to delete). `before` are CTEs the source may read, `also`
    more result columns. With `users` the source also gives user_id, and the row has
    `users`: the events' users for their sketches (`sketches.users_json`), read from the same
    scan and the same dimension values.

    `defer` (SQL of an hour boundary, or of NULL for none): the hours before it that the
    rules of `DEFER_AFTER` pick are left out of the hour-grain tables and the users, and
    marked in `rollup_dirty` (store/deferred.py); the row also has `deferred`, marks added
    (`backlog`, SQL of a boolean: false leaves out the rule of `DEFER_SHARE`).
    """
    dims = sorted(dimensions)
    column = {d: f"d{i}" for i, d in enumerate(dims)}
    singles = ", ".join(["('', '')", *(f"('{d}', f.{column[d]})" for d in dims)])
    pair_rows = ", ".join(
        f"('{a}', '{b}', f.{column[a]}, f.{column[b]})" for a, b in pairs(dimensions)
    )

    def kept(alias: str, ts: str) -> str:
        """AND: the row's hour is not deferred (kept for the hour-grain tables)."""
        if not defer:
            return ""
        return (
            f" AND NOT EXISTS (SELECT FROM deferred h WHERE h.customer_id = {alias}.customer_id"
            f" AND h.name = {alias}.name AND h.hour = date_trunc('hour', {ts}, 'UTC'))"
        )

    n, s = ("sum(f.n)", "sum(f.s)")
    if sign < 0:
        n, s = f"-{n}", f"-{s}"
    group = ", ".join(
        ["f.customer_id", "f.name", "date_trunc('minute', f.ts, 'UTC') AS minute"]
        + [f"f.{column[d]}" for d in dims]
    )
    ctes = [
        *before,
        *fresh_ctes(dimensions, source, users=users, reread=bool(also)),
        # The events per minute and combination of values, before each is spread over the
        # rollup rows it adds to: current events share combinations, so the spreading below
        # handles a fraction of the rows (a backfill's events mostly keep their own).
        f"""g AS MATERIALIZED (
    SELECT {group}, count(*) AS n, coalesce(sum(f.value), 0) AS s
    FROM fresh f GROUP BY {", ".join(str(i) for i in range(1, 4 + len(dims)))})""",
    ]
    if defer:
        # The old hours (before `defer`) to mark instead: those this fold brings a good share
        # of the events to (DEFER_SHARE of what the hour holds with them), every one when
        # the fold is mostly a backfill's (BACKFILL_*), and those marked already. A few late
        # events of a full hour are folded as they come: a rebuild would read the whole
        # hour again for them.
        # `bare`: no event of the hour is in its rollup rows yet (no total row), so a rebuild
        # inserts them (migration 0011). A marked hour is left out of every table by every
        # fold, its minute rows too (a rebuild writes them).
        ctes.append(
            f"""deferred AS MATERIALIZED (
    SELECT f.customer_id, f.name, f.hour, r.count IS NULL AS bare FROM (
        SELECT customer_id, name, date_trunc('hour', minute, 'UTC') AS hour, sum(n) AS n
        FROM g GROUP BY 1, 2, 3) f
    LEFT JOIN rollup_hour r ON r.customer_id = f.customer_id AND r.name = f.name
        AND r.dim = '' AND r.dim_value = '' AND r.bucket = f.hour
    WHERE f.hour < {defer} AND ({backlog} AND f.n >= {DEFER_SHARE} * (coalesce(r.count, 0) + f.n)
       OR (SELECT sum(n) FROM g WHERE minute < {defer})
          >= greatest({BACKFILL_EVENTS}, {BACKFILL_SHARE} * (SELECT sum(n) FROM g)))
       OR EXISTS (
        SELECT FROM rollup_dirty d
        WHERE d.customer_id = f.customer_id AND d.name = f.name AND d.hour = f.hour))"""
        )
    ctes += [
        # Minutes only from the minute horizon on (MINUTE_SINCE, an hour boundary): hours
        # from those minutes, and straight from the events before it.
        f"""s_minute AS MATERIALIZED (
    SELECT f.customer_id, f.name, d.dim, d.val AS dim_value, f.minute AS bucket,
           {n} AS n, {s} AS s
    FROM g f CROSS JOIN LATERAL (VALUES {singles}) AS d(dim, val)
    WHERE d.val IS NOT NULL AND f.minute >= ({MINUTE_SINCE}){kept("f", "f.minute")}
    GROUP BY 1, 2, 3, 4, 5)""",
        f"""s_hour AS (
    SELECT customer_id, name, dim, dim_value, date_trunc('hour', bucket, 'UTC') AS bucket,
           sum(n) AS n, sum(s) AS s
    FROM s_minute GROUP BY 1, 2, 3, 4, 5
    UNION ALL
    SELECT f.customer_id, f.name, d.dim, d.val, date_trunc('hour', f.minute, 'UTC'), {n}, {s}
    FROM g f CROSS JOIN LATERAL (VALUES {singles}) AS d(dim, val)
    WHERE d.val IS NOT NULL AND f.minute < ({MINUTE_SINCE}){kept("f", "f.minute")}
    GROUP BY 1, 2, 3, 4, 5)""",
    ]
    if pair_rows:
        ctes.append(
            f"""p_hour AS MATERIALIZED (
    SELECT f.customer_id, f.name, p.da AS dim_a, p.db AS dim_b, p.va AS value_a,
           p.vb AS value_b, date_trunc('hour', f.minute, 'UTC') AS bucket, {n} AS n, {s} AS s
    FROM g f CROSS JOIN LATERAL (VALUES {pair_rows}) AS p(da, db, va, vb)
    WHERE p.va IS NOT NULL AND p.vb IS NOT NULL{kept("f", "f.minute")}
    GROUP BY 1, 2, 3, 4, 5, 6, 7)""",
        )
    results = ["(SELECT count(*) FROM fresh) AS events", *also]
    if users:
        values = [f"f.{column[d]}" for d in dims]
        from_where = f"FROM fresh f {identity_join('f')} WHERE true{kept('f', 'f.ts')}"
        results.append(f"{users_json('f', values, from_where)} AS users")
    if defer:
        ctes.append(
            """dirty AS (
    INSERT INTO rollup_dirty (customer_id, name, hour, bare)
    SELECT customer_id, name, hour, bare FROM deferred ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING RETURNING 1)"""
        )
        results += ["(SELECT count(*) FROM dirty) AS deferred",
                    "(SELECT count(*) FROM deferred) AS deferring"]  # fmt: skip
    # Only a subtraction can leave a row at 0 (counts only grow otherwise): only then are
    # the rows written returned, for the emptied ones.
    returning = "\n    RETURNING r.*" if sign < 0 else ""
    for table in tables_for(dimensions):
        delta = f"{'p' if table.pair else 's'}_{table.grain}"
        key = ", ".join(table.key)
        order = ", ".join(
            c if c in ("customer_id", "bucket") else f'{c} COLLATE "C"' for c in table.key
        )
        ctes.append(
            f"""up_{table.name} AS (
    INSERT INTO {table.name} AS r ({key}, count, sum_value)
    SELECT {key}, n, s FROM {delta} ORDER BY {order}
    ON CONFLICT ({key}) DO UPDATE
        SET count = r.count + excluded.count,
            sum_value = r.sum_value + excluded.sum_value{returning})"""
        )
        if sign < 0:
            results.append(
                f"(SELECT coalesce(json_agg(u), '[]') FROM up_{table.name} u"
                f" WHERE u.count <= 0) AS emptied_{table.name}"
            )
    return "WITH " + ",\n".join(ctes) + "\nSELECT " + ",\n       ".join(results)


#: The watermark and the xmin of this statement's snapshot, as text (asyncpg has no codec
#: for xid8); locking the state row serializes a fold with an erasure.
_STATE_SQL = """
SELECT watermark::text AS watermark, pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
       CASE WHEN isfinite(minute_since) THEN minute_since END AS minute_since,
       coalesce(minute_since < date_trunc('hour', now() - make_interval(hours => $1), 'UTC'),
                false) AS advance
FROM rollup_state FOR UPDATE
"""

#: The minute horizon moved to now less $1 hours, in whole hours (only ever forward).
_ADVANCE_SQL = """
UPDATE rollup_state SET minute_since = date_trunc('hour', now() - make_interval(hours => $1), 'UTC')
RETURNING minute_since
"""

#: The sweep, a step per fold through the bucket index: the oldest minute row below the
#: horizon, then the rows of its hour (a bounded delete; two plain statements, so Citus runs
#: each on every shard).
_OLDEST_SQL = "SELECT min(bucket) FROM rollup_minute WHERE bucket < $1"
_SWEEP_SQL = "DELETE FROM rollup_minute WHERE bucket < $1"

_SOURCE = """SELECT customer_id, name, ts, value, properties, flags, user_id FROM events
    WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8"""


#: Where a fold of at most $3 events ends: the transaction id of the first event past them
#: (the events of one transaction are folded together: NULL when all fit, or when the first
#: transaction alone holds more, then the fold takes that one transaction).
_BOUND_SQL = """
SELECT e.xid::text AS bound FROM events e
WHERE e.xid >= $1::text::xid8 AND e.xid < $2::text::xid8
ORDER BY e.xid OFFSET $3 LIMIT 1
"""  # (ordered by the column: `ORDER BY xid` would sort the text output, '1008' < '761')

#: The shortest minute horizon: an `interval=minute` range is at most 25 hours, and the
#: last day's minute buckets are what dashboards ask for most.
MIN_MINUTE_HORIZON_H = 25


async def lock_job(conn: asyncpg.Connection, timeout_s: float, *, shared: bool = False) -> bool:
    """Take the job's lock for this transaction, exclusive (a fold) or shared (rebuilds side
    by side: store/deferred.py), and work_mem for its aggregations (with 4 MB a rebuild
    sorted its pairs on disk); False when the lock is held elsewhere."""
    how = "pg_try_advisory_xact_lock_shared" if shared else "pg_try_advisory_xact_lock"
    if not await conn.fetchval(f"SELECT {how}($1)", FOLD_LOCK, timeout=timeout_s):
        return False
    await conn.execute("SET LOCAL work_mem = '64MB'", timeout=timeout_s)
    return True


#: Events one fold takes at most: a backlog (a backfill, a restart after an outage) is folded
#: in many short transactions rather than one that holds the snapshot's xmin back for minutes
#: (the rollup job sizes folds of a backlog up from this: pipeline/rollup_job.py).
FOLD_MAX_EVENTS = 2_000

#: A fold leaves the events of old hours (before the hour this long before the current one)
#: out of the hour-grain rollups and marks them for a rebuild (store/deferred.py, docs/rollups.md
#: "Backfills") when it is mostly old events (`BACKFILL_*`), the hour is marked already, or,
#: in a backlog's folds, it brings `DEFER_SHARE` of the hour's events.
DEFER_AFTER = timedelta(hours=1)
DEFER_SHARE = 0.25
#: A fold with at least this many old events, and this share of it, defers every old hour
#: it touches, however full (else a backfill folds inline into hours its first folds filled:
#: caught up, a service's first folds of a backfill left rows in 1,115 of its 2,876 hours).
BACKFILL_EVENTS = 500
BACKFILL_SHARE = 0.5


@dataclass(frozen=True)
class Folded:
    events: int
    watermark: int
    #: Whether committed events were left for the next fold (it took its `max_events`).
    more: bool = False
    #: Hours (per customer and name) this fold marked for a rebuild (store/deferred.py).
    deferred: int = 0
    #: Hours it left out, marked already or not (a backfill still arriving: pipeline/
    #: rollup_job.py rebuilds after it).
    deferring: int = 0


class Folder:
    """The rollup job's statements for a set of dimensions, built once."""

    def __init__(
        self,
        dimensions: tuple[str, ...],
        minute_horizon_h: int | None = None,
        *,
        defer: bool = True,
    ) -> None:
        """`minute_horizon_h`: keep minute rollups for events at most this many hours old
        (at least `MIN_MINUTE_HORIZON_H`); None keeps them for all. `defer`: see
        `DEFER_AFTER` (never on Citus, whose statement, `citus_sql`, lacks it)."""
        self.sql = fold_sql(
            dimensions, _SOURCE, users=True, defer="$3::timestamptz", backlog="$4::boolean"
        )
        self.citus_sql = fold_sql(dimensions, _SOURCE, users=True)
        self.dims = sorted(dimensions)
        self.defer = defer
        self._citus: bool | None = None
        # None: the state's test (NULL) never moves the horizon.
        self._horizon_h = (
            None if minute_horizon_h is None else max(MIN_MINUTE_HORIZON_H, minute_horizon_h)
        )
        #: Whether minute rows below the horizon may be left (swept a step per fold).
        self._sweep = minute_horizon_h is not None

    async def fold(
        self,
        conn: asyncpg.Connection,
        timeout_s: float,
        cpu: Cpu = inline,
        max_events: int = FOLD_MAX_EVENTS,
    ) -> Folded | None:
        """Fold every event committed since the last fold into the rollups and the user
        sketches (built by `cpu`, a worker thread in the service); None when another process
        holds the job's lock (it is folding)."""
        if self._citus is None:
            self._citus = await is_citus(conn)
        async with conn.transaction():
            if not await lock_job(conn, timeout_s):
                return None
            if self._citus:
                await conn.execute(SEQUENTIAL_SQL, timeout=timeout_s)
            state = await conn.fetchrow(_STATE_SQL, self._horizon_h, timeout=timeout_s)
            low, high = state["watermark"], state["xmin"]
            since = state["minute_since"]
            if state["advance"]:
                since = await conn.fetchval(_ADVANCE_SQL, self._horizon_h, timeout=timeout_s)
                self._sweep = True
            if self._sweep and since is not None:
                oldest = await conn.fetchval(_OLDEST_SQL, since, timeout=timeout_s)
                self._sweep = oldest is not None
                if oldest is not None:
                    step = min(since, oldest + timedelta(hours=1))
                    await conn.execute(_SWEEP_SQL, step, timeout=timeout_s)
            if int(high) <= int(low):
                return Folded(0, int(low))
            if self._citus and not await settled(conn, timeout_s):
                return Folded(0, int(low))  # a worker's commit is in doubt: next round
            bound = await conn.fetchval(_BOUND_SQL, low, high, max_events, timeout=timeout_s)
            more = bound is not None
            if more:
                # Up to the transaction past the limit; at least the first one.
                first = await conn.fetchval(
                    "SELECT min(xid)::text FROM events WHERE xid >= $1::text::xid8", low
                )
                high = bound if int(bound) > int(first) else str(int(first) + 1)
            hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            # A backlog's (it leaves events for the next, or the job sized it up for one)
            # defers by every rule; one caught up, a backfill's only (a trickle of late
            # events is folded as it comes).
            backlog = more or max_events > FOLD_MAX_EVENTS
            args = (hour - DEFER_AFTER if self.defer else None, backlog)
            sql, args = (self.citus_sql, ()) if self._citus else (self.sql, args)
            row = await conn.fetchrow(sql, low, high, *args, timeout=timeout_s)
            deferred = (0, 0) if self._citus else (row["deferred"], row["deferring"])
            if row["events"]:
                await merge_users(conn, row["users"], self.dims, cpu, timeout_s)
            await conn.execute(
                "UPDATE rollup_state SET watermark = $1::text::xid8", high, timeout=timeout_s
            )
        return Folded(row["events"], int(high), more, *deferred)


async def watermark(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT watermark::text FROM rollup_state"))


async def pending_events(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Events committed but not folded yet (the job's backlog)."""
    return await conn.fetchval(
        "SELECT count(*) FROM events WHERE xid >= (SELECT watermark FROM rollup_state)"
    )
