"""Hours whose rollups the rollup job deferred, and their rebuild (migrations 0009, 0011).

A fold of a backfill (store/rollups.py `Folder.fold`, `DEFER_AFTER`) leaves the events of
old hours out of the rollups (`rollup_minute`, `rollup_hour`, `rollup_pair_hour`,
`rollup_users_hour`), and marks each such (customer, name, hour) in `rollup_dirty`.
`rebuild` then takes the oldest marks, computes those hours' rows from every folded raw
event of them (read with the fold's dimension values, summed and sketched in Rust:
`normalize.rebuild_rows`), writes them over the stored rows and deletes the marks, in one
transaction under the job's lock. So in any snapshot a marked hour's rows are stale and an
unmarked hour's rows hold every event below the watermark: queries read a marked hour from
the raw events only (`clean`, `dirty_hours`).

Why: a backfill's events are spread over weeks, so the events of one fold, however large,
put a few events in each hour: every event was an upsert in 6 hour rows, 10 pair rows and
~6 sketches of its own (read, merged, written back), and the next fold rewrote the same
sketches again. Rebuilt once, the events of an hour share their rows: the measured saving
is in docs/rollups.md.

Not on Citus: there the fold folds every event as it comes (the rebuild's statements are
not distributed-query safe as written, and untested there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from analytics.normalize import rebuild_rows
from analytics.store.citus import is_citus
from analytics.store.dimensions import fresh_ctes
from analytics.store.group_commit import COPY_HEADER, COPY_TRAILER
from analytics.store.identities import identified_user, identity_join
from analytics.store.rollups import PAIR_KEY, SINGLE_KEY, lock_job
from analytics.store.sketches import Cpu, write_sketches

log = logging.getLogger(__name__)

#: Every folded event (below the watermark, $4) of the hours given as arrays $1..$3, each
#: hour read through the events' (customer, name, ts) index: a lateral subquery the planner
#: may not flatten (OFFSET 0). As a plain join, at 10M events it hashed a sequential scan of
#: every event instead (it cannot see how narrow an hour is: 13 s for 1,400 events).
_SOURCE = """SELECT e.customer_id, e.name, e.ts, e.value, e.properties, e.flags, e.user_id
    FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS d(customer_id, name, hour)
    CROSS JOIN LATERAL (SELECT * FROM events WHERE customer_id = d.customer_id
        AND name = d.name COLLATE "C" AND ts >= d.hour AND ts < d.hour + interval '1 hour'
        AND xid < $4::text::xid8 OFFSET 0) AS e"""


def rebuild_sql(dimensions: tuple[str, ...]) -> str:
    """The events of the hours `_SOURCE` reads: how many, and each one as a JSON row for
    `normalize.rebuild_rows` (`[customer, name, minute, value, user as identified, [the value
    of each dimension of sorted(dimensions)]]`), read once, dimensions as the fold reads them."""
    values = ", ".join(f"f.d{i}" for i in range(len(dimensions)))
    return f"""WITH {", ".join(fresh_ctes(dimensions, _SOURCE, users=True))}
SELECT count(*) AS events, coalesce(json_agg(json_build_array(f.customer_id, f.name,
    extract(epoch FROM date_trunc('minute', f.ts, 'UTC'))::bigint, f.value,
    {identified_user("f")}, json_build_array({values})))::text, '[]') AS rows
FROM fresh f {identity_join("f")}"""


#: The watermark, and where minute rows begin (Unix seconds; the minute horizon, store/
#: rollups.py `MINUTE_SINCE`: before it a rebuild writes none, like a fold).
_STATE_SQL = """SELECT watermark::text AS watermark, CASE WHEN isfinite(minute_since)
    THEN extract(epoch FROM minute_since)::bigint ELSE -4611686018427387904 END AS since
    FROM rollup_state"""

#: The oldest marks first (a mark's hour is rebuilt whole, whatever its size), none that a
#: rebuild running beside this one took.
_PICK_SQL = """SELECT customer_id, name, hour, bare FROM rollup_dirty
    ORDER BY marked_at, customer_id, name, hour LIMIT $1 FOR UPDATE SKIP LOCKED"""

_UNMARK_SQL = """DELETE FROM rollup_dirty d
    USING unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS k(customer_id, name, hour)
    WHERE d.customer_id = k.customer_id AND d.name = k.name COLLATE "C" AND d.hour = k.hour"""


def _staged(table: str, key: tuple[str, ...]) -> tuple[str, str, str]:
    """For `table`: the session's own table where a rebuild's rows of hours with rows already
    wait (emptied as they are upserted), and the upsert from it, replacing the stored rows
    (the rows of an hour that has some are a subset of those its events make)."""
    staging, columns = f"rebuilt_{table}", ", ".join(key)
    create = f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS"
    upsert = f"""WITH staged AS (DELETE FROM {staging} RETURNING *)
    INSERT INTO {table} AS r ({columns}, count, sum_value)
    SELECT {columns}, count, sum_value FROM staged
    ON CONFLICT ({columns}) DO UPDATE SET count = excluded.count, sum_value = excluded.sum_value"""
    return staging, create, upsert


#: The tables a rebuild copies its rows into (`rebuild_rows`'s tuples: the key, count,
#: sum_value), with their staging (`_staged`).
_TABLES = (
    ("rollup_minute", SINGLE_KEY),
    ("rollup_hour", SINGLE_KEY),
    ("rollup_pair_hour", PAIR_KEY),
)


@dataclass(frozen=True)
class Rebuilt:
    #: Marked hours rebuilt (per customer and name), and the events they hold.
    hours: int
    events: int
    #: Whether marks were left (it took its `max_hours`).
    more: bool


#: A rebuild of many marks is sized to take about this long (from the last one's rate), from
#: `FIRST_HOURS` marks up to `MAX_HOURS`: short transactions, as for folds of a backlog.
REBUILD_S = 2.0
FIRST_HOURS = 24
MAX_HOURS = 5_000


class Rebuilder:
    """The rebuild's statements for a set of dimensions, built once, and the size of the
    next rebuild."""

    def __init__(self, dimensions: tuple[str, ...]) -> None:
        self.dims = sorted(dimensions)
        #: Marks the next rebuild takes (`REBUILD_S`).
        self.hours = FIRST_HOURS
        self._citus: bool | None = None
        self.sql = rebuild_sql(dimensions)

    async def rebuild(
        self, conn: asyncpg.Connection, timeout_s: float, cpu: Cpu, max_hours: int | None = None
    ) -> Rebuilt | None:
        """Rebuild the rollups of the (at most `max_hours`, else `hours`) oldest marked hours
        and unmark them; None when a fold or an erasure holds the job's lock. Rebuilds on
        other connections may run at the same time: each takes marks the others did not."""
        started = time.perf_counter()
        rebuilt = await self._rebuild(conn, timeout_s, cpu, max_hours or self.hours)
        if max_hours is None and rebuilt is not None and rebuilt.more:
            rate = rebuilt.hours / max(time.perf_counter() - started, 1e-3)
            self.hours = int(min(max(rate * REBUILD_S, 1), MAX_HOURS))
        return rebuilt

    async def _rebuild(
        self, conn: asyncpg.Connection, timeout_s: float, cpu: Cpu, max_hours: int
    ) -> Rebuilt | None:
        if self._citus is None:
            self._citus = await is_citus(conn)
        if self._citus:
            return Rebuilt(0, 0, False)  # nothing is deferred there (module doc)
        async with conn.transaction():
            # Shared: rebuilds of other marks may run beside this one (each its own hours'
            # rows); a fold or an erasure (exclusive) neither runs meanwhile nor starts.
            if not await lock_job(conn, timeout_s, shared=True):
                return None
            picked = await conn.fetch(_PICK_SQL, max_hours, timeout=timeout_s)
            if not picked:
                return Rebuilt(0, 0, False)
            state = await conn.fetchrow(_STATE_SQL, timeout=timeout_s)
            events = 0
            for bare in (False, True):
                marks = [m[:3] for m in picked if m["bare"] is bare]
                if marks:
                    events += await self._write(conn, marks, state, bare, timeout_s, cpu)
        return Rebuilt(len(picked), events, len(picked) == max_hours)

    async def _write(
        self,
        conn: asyncpg.Connection,
        marks: list[Any],
        state: asyncpg.Record,
        bare: bool,
        timeout_s: float,
        cpu: Cpu,
    ) -> int:
        """Rebuild and unmark these hours (bare: their rows copied in; should one of them
        have a row after all, upserted instead); the events they hold."""
        keys: list[list[Any]] = [list(c) for c in zip(*marks, strict=True)]
        row = await conn.fetchrow(self.sql, *keys, state["watermark"], timeout=timeout_s)
        *tuples, sketches = await cpu(rebuild_rows, row["rows"], self.dims, state["since"])
        try:
            async with conn.transaction():  # a savepoint: a bare hour's conflict undoes it
                await self._copy(conn, tuples, bare, timeout_s)
        except asyncpg.UniqueViolationError:
            log.warning("rebuild: a bare hour had rollup rows; rebuilt with upserts")
            await self._copy(conn, tuples, False, timeout_s)
        await write_sketches(conn, sketches, cpu, timeout_s)
        await conn.execute(_UNMARK_SQL, *keys, timeout=timeout_s)
        return row["events"]

    async def _copy(
        self, conn: asyncpg.Connection, tuples: list[bytes], bare: bool, timeout_s: float
    ) -> None:
        """The minute, hour and pair rows (`rebuild_rows`' COPY tuples) into their tables: copied in
        when bare (a plain insert), else copied into a staging table and upserted from it.
        In SQL (spread, hashed, sorted, upserted), the pair rows were 80 % of a rebuild."""
        for data, (table, key) in zip(tuples, _TABLES, strict=True):
            if not data:
                continue
            staging, create, upsert = _staged(table, key)
            if not bare:
                await conn.execute(create, timeout=timeout_s)
            await conn.copy_to_table(
                table if bare else staging,
                source=memoryview(b"".join([COPY_HEADER, data, COPY_TRAILER])),
                columns=[*key, "count", "sum_value"],
                format="binary",
                timeout=timeout_s,
            )
            if not bare:
                await conn.execute(upsert, timeout=timeout_s)


async def marked_hours(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Hours (per customer and name) waiting for a rebuild."""
    return await conn.fetchval("SELECT count(*) FROM rollup_dirty")


_ANY_MARKED_SQL = """SELECT EXISTS (SELECT FROM rollup_dirty WHERE customer_id = $1 AND name = $2
    AND hour >= date_trunc('hour', $3::timestamptz, 'UTC') AND hour < $4)"""


async def any_marked(conn: asyncpg.Connection, q: Any, timeout_s: float) -> bool:
    """Whether any hour of the range of `q` (a `series.MetricsQuery`) is marked: only then
    does a query read its marks (`clean`, `dirty_hours`: ~30 % of a 30-day grouped query's
    time when read for nothing)."""
    return await conn.fetchval(
        _ANY_MARKED_SQL, q.customer_id, q.name, q.start, q.end, timeout=timeout_s
    )


def clean(customer: str, name: str, hour: str) -> str:
    """SQL condition: the hour `hour` (SQL of an hour boundary) of `customer` and `name`
    (parameters) is not marked, so its hour-grain rollups are complete."""
    return (
        f"NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.customer_id = {customer}"
        f" AND d.name = {name} AND d.hour = {hour})"
    )


def dirty_hours(customer: str, name: str, start: str, end: str, alias: str = "events") -> str:
    """SQL of a FROM list: the events of `customer` and `name` (parameters) in the marked
    hours within [start, end), as `alias` (each hour found by its mark, then read through
    the events' (customer, name, ts) index: OFFSET 0, as in `_SOURCE`)."""
    return f"""(SELECT d.hour FROM rollup_dirty d WHERE d.customer_id = {customer}
        AND d.name = {name} AND d.hour >= date_trunc('hour', {start}::timestamptz, 'UTC')
        AND d.hour < {end}) AS dirty
    CROSS JOIN LATERAL (SELECT * FROM events WHERE customer_id = {customer} AND name = {name}
        AND ts >= dirty.hour AND ts < dirty.hour + interval '1 hour' OFFSET 0) AS {alias}"""
