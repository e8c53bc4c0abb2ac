"""SQL for `GET /v1/metrics`: rollups when they can answer, raw events when they cannot.

Minute rollups hold count and sum per event name and per single dimension value, so they
answer an unfiltered query, one grouped by a dimension, or one filtered on a single
dimension (grouped by that same dimension or not). Everything else — several filters, a
filter plus a different grouping, and unique users (which do not add up across buckets) —
is computed from the raw events, whose index covers (customer, name, ts, user_id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from analytics.store.dimensions import dimension_expr

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
    def uses_rollups(self) -> bool:
        if self.agg == "unique_users" or len(self.filters) > 1:
            return False
        return not self.filters or self.group_by in (None, self.filters[0][0])


def _rollup_sql(q: MetricsQuery) -> tuple[str, list[object]]:
    dim = q.filters[0][0] if q.filters else (q.group_by or "")
    args: list[object] = [q.customer_id, q.name, dim, q.start, q.end, q.interval]
    where = ""
    if q.filters:
        args.append(q.filters[0][1])
        where = f"AND dim_value = ${len(args)}"
    group = "dim_value" if q.group_by else "NULL::text"
    value = "sum(count)" if q.agg == "count" else "sum(sum_value)"
    sql = f"""
        SELECT date_trunc($6, bucket, 'UTC') AS b, {group} AS g, {value} AS v
        FROM rollup_minute
        WHERE customer_id = $1 AND name = $2 AND dim = $3 AND bucket >= $4 AND bucket < $5
              {where}
        GROUP BY 1, 2"""
    return sql, args


def _raw_sql(q: MetricsQuery) -> tuple[str, list[object]]:
    args: list[object] = [q.customer_id, q.name, q.start, q.end, q.interval]
    where = []
    for dim, value in q.filters:
        args.append(value)
        where.append(f"AND {dimension_expr(dim)} = ${len(args)}")
    group = dimension_expr(q.group_by) if q.group_by else "NULL::text"
    value = {
        "count": "count(*)",
        "sum": "coalesce(sum(value), 0)",
        "unique_users": "count(DISTINCT user_id)",
    }[q.agg]
    having = f"HAVING {group} IS NOT NULL" if q.group_by else ""
    sql = f"""
        SELECT date_trunc($5, ts, 'UTC') AS b, {group} AS g, {value} AS v
        FROM events
        WHERE customer_id = $1 AND name = $2 AND ts >= $3 AND ts < $4 {" ".join(where)}
        GROUP BY 1, 2 {having}"""
    return sql, args


async def fetch_series(
    conn: asyncpg.Connection | asyncpg.Pool, q: MetricsQuery, timeout_s: float
) -> list[tuple[datetime, str | None, float]]:
    """(bucket start, group or None, value) for every non-empty bucket of the query."""
    sql, args = _rollup_sql(q) if q.uses_rollups else _raw_sql(q)
    rows = await conn.fetch(sql, *args, timeout=timeout_s)
    return [(r["b"], r["g"], r["v"]) for r in rows]
