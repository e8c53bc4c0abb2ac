"""SQL for `GET /v1/metrics`: rollups when they can answer, raw events when they cannot.

The rollups (store/rollups.py) hold counts and sums per event name and minute or hour (day
queries sum hours): per single dimension value, and per pair of values (hours). So they
answer a query with no filter, one filter, or two, grouped by a dimension or not, as long as
at most two dimensions are involved (pairs only for hour and day queries). Unique users
(which do not add up across buckets or values) and everything else come from raw events,
whose index covers (customer, name, ts, user_id).

An answer from rollups is the rollups (every event below the rollup job's watermark) plus
the raw events at or above the watermark, read in one snapshot: exact, and never staler than
the last commit. Each row says where it came from (`Part`), because events without the
grouped dimension are not in any group's rollup row: that group (`None`) is the total less
the groups, bucket by bucket. Hours whose rollups the job deferred (a backfill's:
store/deferred.py) are read from their raw events only, folded or not, while marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import NamedTuple

import asyncpg

from analytics.store.deferred import any_marked, clean, dirty_hours
from analytics.store.dimensions import dimension_expr
from analytics.store.rollups import pair_table, single_table

INTERVALS = ("minute", "hour", "day")
AGGS = ("count", "sum", "unique_users")


@dataclass(frozen=True)
class MetricsQuery:
    customer_id: int
    name: str
    interval: str
    start: datetime
    end: datetime
    agg: str = "count"
    group_by: str | None = None
    filters: tuple[tuple[str, str], ...] = ()

    @property
    def dims(self) -> set[str]:
        """The dimensions the query involves (filtered or grouped)."""
        return {d for d, _ in self.filters} | ({self.group_by} if self.group_by else set())

    @property
    def none_group(self) -> bool:
        """Whether the answer may hold events without the grouped dimension (group None):
        grouped, and not by a filtered dimension."""
        return self.group_by is not None and self.group_by not in dict(self.filters)

    @property
    def uses_rollups(self) -> bool:
        if self.agg == "unique_users" or len({d for d, _ in self.filters}) < len(self.filters):
            return False
        if len(self.dims) <= 1:
            return True
        return len(self.dims) == 2 and pair_table(self.interval) is not None


class Part(Enum):
    #: A group's rollup rows (events below the watermark).
    ROLLUP = "g"
    #: The total of every event the query selects, from rollups: with `ROLLUP`, it gives the
    #: group of events without the grouped dimension.
    TOTAL = "t"
    #: Raw events (above the watermark, or every one when rollups cannot answer); events
    #: without the grouped dimension are in group None.
    RAW = "r"


class SeriesRow(NamedTuple):
    bucket: datetime
    group: str | None
    part: Part
    #: Events counted.
    count: int
    #: The aggregate: count, sum of values, or unique users.
    value: float


class _Args:
    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _single_sql(
    q: MetricsQuery,
    a: _Args,
    part: Part,
    dim: str,
    value: str | None,
    since: str | None,
    marked: bool,
) -> str:
    grouped = part is Part.ROLLUP and q.group_by is not None
    where = f" AND dim_value = {a(value)}" if value is not None else ""
    if since is not None:
        where += f" AND bucket >= {since}"
    if marked:
        hour = "date_trunc('hour', bucket, 'UTC')" if q.interval == "minute" else "bucket"
        where += f" AND {_clean(q, a, hour)}"
    group = "dim_value" if grouped and dim == q.group_by else "NULL::text"
    return f"""
        SELECT date_trunc({a(q.interval)}, bucket, 'UTC') AS b, {group} AS g,
               '{part.value}' AS p, sum(count)::bigint AS n, sum(sum_value)::float8 AS v
        FROM {single_table(q.interval)}
        WHERE customer_id = {a(q.customer_id)} AND name = {a(q.name)} AND dim = {a(dim)}
              AND bucket >= {a(q.start)} AND bucket < {a(q.end)}{where}
        GROUP BY 1, 2"""


def _pair_sql(q: MetricsQuery, a: _Args, marked: bool) -> str:
    """Two dimensions: a filter and a group-by, or two filters (grouped by one or not)."""
    filters = dict(q.filters)
    dim_a, dim_b = sorted(q.dims)
    where = "".join(
        f" AND value_{side} = {a(filters[dim])}"
        for side, dim in (("a", dim_a), ("b", dim_b))
        if dim in filters
    )
    group = "NULL::text"
    if q.group_by is not None:
        group = "value_a" if q.group_by == dim_a else "value_b"
    return f"""
        SELECT date_trunc({a(q.interval)}, bucket, 'UTC') AS b, {group} AS g,
               '{Part.ROLLUP.value}' AS p, sum(count)::bigint AS n,
               sum(sum_value)::float8 AS v
        FROM {pair_table(q.interval)}
        WHERE customer_id = {a(q.customer_id)} AND name = {a(q.name)}
              AND dim_a = {a(dim_a)} AND dim_b = {a(dim_b)}
              AND bucket >= {a(q.start)} AND bucket < {a(q.end)}{where}
              {"AND " + _clean(q, a, "bucket") if marked else ""}
        GROUP BY 1, 2"""


def _clean(q: MetricsQuery, a: _Args, hour: str) -> str:
    """The hour `hour` (SQL) is not deferred: its hour-grain rollups hold every folded event
    (store/deferred.py); a deferred hour is read from the raw events alone."""
    return clean(a(q.customer_id), a(q.name), hour)


def _raw_sql(
    q: MetricsQuery,
    a: _Args,
    after: str | None,
    since: str | None = None,
    old: bool = False,
    *,
    source: str = "events",
    marked: bool = False,
) -> str:
    """Raw events of the query (from `source`, a FROM list giving them as `events`); `after`
    (a parameter) limits them to those not folded (and, when the range has `marked` hours,
    to those outside them, which `deferred_sql` reads whole); `since` (a parameter) to those
    from it on, or with `old` to those before it."""
    where = [f"AND {dimension_expr(d, flags='flags')} = {a(v)}" for d, v in q.filters]
    if after is not None:
        where.append(f"AND xid >= {after}::text::xid8")
        if marked:
            where.append("AND " + _clean(q, a, "date_trunc('hour', ts, 'UTC')"))
    if since is not None:
        where.append(f"AND ts {'<' if old else '>='} {since}")
    group = dimension_expr(q.group_by, flags="flags") if q.group_by else "NULL::text"
    if q.agg == "unique_users":
        # An anonymous id linked to an identified user counts as that user (0006_identities).
        value = (
            "count(DISTINCT coalesce((SELECT i.user_id FROM identities i"
            f" WHERE i.customer_id = {a(q.customer_id)} AND i.anonymous_id = events.user_id),"
            " user_id))"
        )
    else:
        value = {"count": "count(*)", "sum": "coalesce(sum(value), 0)"}[q.agg]
    return f"""
        SELECT date_trunc({a(q.interval)}, ts, 'UTC') AS b, {group} AS g,
               '{Part.RAW.value}' AS p, count(*) AS n, ({value})::float8 AS v
        FROM {source}
        WHERE customer_id = {a(q.customer_id)} AND name = {a(q.name)}
              AND ts >= {a(q.start)} AND ts < {a(q.end)} {" ".join(where)}
        GROUP BY 1, 2"""


def deferred_sql(q: MetricsQuery, a: _Args, since: str | None = None) -> str:
    """Every raw event of the query in its deferred hours, folded or not (their rollup rows
    are left out by `_clean`); a minute query's from `since` on (a parameter: the raw events
    before it are read whole)."""
    start = since or a(q.start)
    hours = dirty_hours(a(q.customer_id), a(q.name), start, a(q.end))
    return _raw_sql(q, a, None, source=hours)


def rollup_sql(q: MetricsQuery, marked: bool = False) -> tuple[str, list[object]]:
    """The query over rollups and the raw events not folded; the first parameter is the
    watermark (text, None here), which the caller reads in the same snapshot. A minute
    query's second parameter is where its minute rollups begin (`split`, from the same
    snapshot): its buckets before that are read from every raw event. `marked`: the range
    has deferred hours (`deferred.any_marked`, in the same snapshot), read from the raw
    events instead of their rollups."""
    a = _Args()
    watermark = a(None)
    since = a(None) if q.interval == "minute" else None
    filters = dict(q.filters)
    parts = []
    if len(q.dims) == 2:
        parts.append(_pair_sql(q, a, marked))
    else:
        dim = next(iter(q.dims), "")
        parts.append(_single_sql(q, a, Part.ROLLUP, dim, filters.get(dim), since, marked))
    if q.none_group:
        # The total the groups are taken from: the filter's single rollup, or all events.
        dim, value = next(iter(q.filters), ("", None))
        parts.append(_single_sql(q, a, Part.TOTAL, dim, value, since, marked))
    parts.append(_raw_sql(q, a, watermark, since, marked=marked))
    if since is not None:
        parts.append(_raw_sql(q, a, None, since, old=True))
    if marked:
        parts.append(deferred_sql(q, a, since))
    return " UNION ALL ".join(parts), a.values


def split(q: MetricsQuery, minute_since: datetime | None) -> datetime:
    """Where a minute query's buckets from rollups begin: the minute horizon (None: every
    minute row kept) within the query's range."""
    return min(max(q.start, minute_since or q.start), q.end)


#: The watermark, and custom plans for this transaction: a generic plan (which PostgreSQL
#: picks after five runs of a prepared statement) cannot see how few events lie above the
#: watermark and scans the whole range of raw events instead (20 ms became 350 ms).
#: Joined with one of the customer's keys: under Citus that routes the statement to the
#: customer's worker, which reads its copy of the watermark in the snapshot the rows are then
#: read in (the fold makes a worker's rollups and watermark visible at once: store/rollups.py);
#: read alone it would come from the coordinator's copy, in another snapshot. (A customer with
#: no key left reads the watermark alone.)
WATERMARK_SQL = """
SELECT s.watermark::text,
       CASE WHEN isfinite(s.minute_since) THEN s.minute_since END AS minute_since
FROM rollup_state s JOIN api_keys k ON k.customer_id = $1
WHERE set_config('plan_cache_mode', 'force_custom_plan', true) IS NOT NULL
LIMIT 1
"""
_ANY_WATERMARK_SQL = """
SELECT watermark::text, CASE WHEN isfinite(minute_since) THEN minute_since END
FROM rollup_state
WHERE set_config('plan_cache_mode', 'force_custom_plan', true) IS NOT NULL
"""


async def read_state(conn: asyncpg.Connection, customer_id: int) -> tuple[str, datetime | None]:
    """The watermark (text) and where minute rollups begin (None: for every event), first
    thing in a REPEATABLE READ transaction whose reads are about `customer_id` (see
    WATERMARK_SQL)."""
    row = await conn.fetchrow(WATERMARK_SQL, customer_id)
    if row is None:
        row = await conn.fetchrow(_ANY_WATERMARK_SQL)
    return row[0], row[1]


async def read_watermark(conn: asyncpg.Connection, customer_id: int) -> str:
    """The watermark alone (see `read_state`)."""
    return (await read_state(conn, customer_id))[0]


async def fetch_series(
    pool: asyncpg.Pool, q: MetricsQuery, timeout_s: float, *, rollups: bool = True
) -> list[SeriesRow]:
    """Every non-empty (bucket, group, part) of the query; from raw events only when
    `rollups` is False (what the rollups must agree with)."""
    async with pool.acquire(timeout=timeout_s) as conn:
        if not (rollups and q.uses_rollups):
            a = _Args()
            rows = await conn.fetch(_raw_sql(q, a, None), *a.values, timeout=timeout_s)
        else:
            # One snapshot for the watermark and the rows, so each event is read once: in
            # the rollups or among the raw events after the watermark.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                watermark, minute_since = await read_state(conn, q.customer_id)
                marked = await any_marked(conn, q, timeout_s)
                sql, args = rollup_sql(q, marked)
                args[0] = watermark
                if q.interval == "minute":
                    args[1] = split(q, minute_since)
                rows = await conn.fetch(sql, *args, timeout=timeout_s)
    part = {p.value: p for p in Part}
    return [SeriesRow(b, g, part[p], n, v) for b, g, p, n, v in rows]
