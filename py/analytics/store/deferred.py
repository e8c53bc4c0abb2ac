"""Hours whose hour-grain rollups the rollup job deferred, and their rebuild (migration 0009).

A fold of a backlog (store/rollups.py `Folder.fold`, `DEFER_AFTER`) leaves the events of old
hours out of `rollup_hour`, `rollup_pair_hour` and `rollup_users_hour`, and marks each such
(customer, name, hour) in `rollup_dirty`. Minute rows are written as always. `rebuild` then
takes the oldest marks, computes those hours' rows from every folded raw event of them (the
fold's own SQL over a different source, replacing the stored rows instead of adding to
them) and deletes the marks, in one transaction under the job's lock. So in any snapshot a
marked hour's rows are stale and an unmarked hour's rows hold every event below the
watermark: queries read a marked hour from the raw events only (`clean`, `dirty_hours`).

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

from analytics.normalize import pair_copy
from analytics.store.citus import is_citus
from analytics.store.group_commit import COPY_HEADER, COPY_TRAILER
from analytics.store.rollups import PAIR_KEY, fold_sql, lock_job
from analytics.store.sketches import Cpu, merge_users

log = logging.getLogger(__name__)

#: The columns of `pair_copy`'s tuples (rust/normalize/src/pair_rows.rs, PAIR_COLUMNS).
PAIR_COLUMNS = (*PAIR_KEY, "count", "sum_value")

#: Every folded event (below the watermark, $4) of the hours given as arrays $1..$3, each
#: hour read through the events' (customer, name, ts) index: a lateral subquery the planner
#: may not flatten (OFFSET 0). As a plain join, at 10M events it hashed a sequential scan of
#: every event instead (it cannot see how narrow an hour is: 13 s for 1,400 events).
_SOURCE = """SELECT e.customer_id, e.name, e.ts, e.value, e.properties, e.flags, e.user_id
    FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS d(customer_id, name, hour)
    CROSS JOIN LATERAL (SELECT * FROM events WHERE customer_id = d.customer_id
        AND name = d.name COLLATE "C" AND ts >= d.hour AND ts < d.hour + interval '1 hour'
        AND xid < $4::text::xid8 OFFSET 0) AS e"""

#: The oldest marks first (a mark's hour is rebuilt whole, whatever its size), none that a
#: rebuild running beside this one took.
_PICK_SQL = """SELECT customer_id, name, hour, bare FROM rollup_dirty
    ORDER BY marked_at, customer_id, name, hour LIMIT $1 FOR UPDATE SKIP LOCKED"""

_UNMARK_SQL = """DELETE FROM rollup_dirty d
    USING unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS k(customer_id, name, hour)
    WHERE d.customer_id = k.customer_id AND d.name = k.name COLLATE "C" AND d.hour = k.hour"""


#: Where a rebuild's pair rows for hours with rows already wait to be upserted (the
#: session's own table, emptied as they are).
_STAGED_SQL = """CREATE TEMP TABLE IF NOT EXISTS rebuilt_pairs (LIKE rollup_pair_hour)
    ON COMMIT DELETE ROWS"""
_KEY = ", ".join(PAIR_KEY)
_UPSERT_STAGED_SQL = f"""WITH staged AS (DELETE FROM rebuilt_pairs RETURNING *)
    INSERT INTO rollup_pair_hour AS r ({_KEY}, count, sum_value)
    SELECT {_KEY}, count, sum_value FROM staged
    ON CONFLICT ({_KEY}) DO UPDATE SET count = excluded.count, sum_value = excluded.sum_value"""


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
        # Hour-grain rows only (no minute row: they were written by the fold), replacing;
        # inserted for bare hours (no row yet: migration 0011); the pair rows summed in
        # Rust and copied in (`pair_copy`), or upserted from a copy (`_rows`).
        self.sql, self.bare_sql = (
            fold_sql(
                dimensions,
                _SOURCE,
                users=True,
                replace=True,
                bare=bare,
                pair_json=True,
                minute_since="SELECT 'infinity'::timestamptz",
            )
            for bare in (False, True)
        )

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
            mark = await conn.fetchval(
                "SELECT watermark::text FROM rollup_state", timeout=timeout_s
            )
            events = 0
            for bare in (False, True):
                marks = [m[:3] for m in picked if m["bare"] is bare]
                if marks:
                    events += await self._write(conn, marks, mark, bare, timeout_s, cpu)
        return Rebuilt(len(picked), events, len(picked) == max_hours)

    async def _write(
        self,
        conn: asyncpg.Connection,
        marks: list[Any],
        mark: str,
        bare: bool,
        timeout_s: float,
        cpu: Cpu,
    ) -> int:
        """Rebuild and unmark these hours (bare: with plain INSERTs; should one of them have
        a row after all, with upserts instead); the events they hold."""
        keys: list[list[Any]] = [list(c) for c in zip(*marks, strict=True)]
        try:
            async with conn.transaction():  # a savepoint: a bare hour's conflict undoes it
                row = await self._rows(conn, keys, mark, bare, timeout_s, cpu)
        except asyncpg.UniqueViolationError:
            log.warning("rebuild: a bare hour had rollup rows; rebuilt with upserts")
            row = await self._rows(conn, keys, mark, False, timeout_s, cpu)
        if row["events"]:
            await merge_users(conn, row["users"], self.dims, cpu, timeout_s, replace=True)
        await conn.execute(_UNMARK_SQL, *keys, timeout=timeout_s)
        return row["events"]

    async def _rows(
        self,
        conn: asyncpg.Connection,
        keys: list[list[Any]],
        mark: str,
        bare: bool,
        timeout_s: float,
        cpu: Cpu,
    ) -> asyncpg.Record:
        """Write the hours' hour rows, and their pair rows (`pair_copy`): copied into the
        table when bare, else copied into `_STAGED_SQL`'s table and upserted from there (the
        rows of an hour that has some are a subset of those its events make). In SQL, the
        pairs were 80 % of a rebuild's cost: ~11 µs a row to spread, hash, sort and insert,
        and 5 more to upsert."""
        sql = self.bare_sql if bare else self.sql
        row = await conn.fetchrow(sql, *keys, mark, timeout=timeout_s)
        data, rows = await cpu(pair_copy, row["pairs"], self.dims)
        if rows:
            if not bare:
                await conn.execute(_STAGED_SQL, timeout=timeout_s)
            await conn.copy_to_table(
                "rollup_pair_hour" if bare else "rebuilt_pairs",
                source=memoryview(b"".join([COPY_HEADER, data, COPY_TRAILER])),
                columns=list(PAIR_COLUMNS),
                format="binary",
                timeout=timeout_s,
            )
            if not bare:
                await conn.execute(_UPSERT_STAGED_SQL, timeout=timeout_s)
        return row


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
