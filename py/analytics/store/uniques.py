"""Unique users for `GET /v1/metrics`: exact from raw events when the range holds few enough
events, else estimated from the hourly HyperLogLog sketches (store/sketches.py) plus the
users of the events the rollup job has not folded yet, read in one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from analytics.store.deferred import any_marked, dirty_hours
from analytics.store.dimensions import dimension_expr
from analytics.store.identities import IDENTIFIED_USER, IDENTITY_JOIN
from analytics.store.series import MetricsQuery, read_watermark
from analytics.store.sketches import MISSING

#: A unique-users query over at most this many events is counted exactly from the raw events
#: (tens of milliseconds); above, it is estimated from the hourly sketches.
EXACT_UNIQUE_EVENTS = 100_000


@dataclass(frozen=True)
class UniqueRows:
    """What a unique-users answer is estimated from: (bucket, group, sketch) of the folded
    events, and (bucket, group, users) of the events above the watermark."""

    sketches: list[tuple[datetime, str | None, bytes]]
    raw: list[tuple[datetime, str | None, list[str]]]


def _selection(q: MetricsQuery) -> tuple[str, str | None]:
    """The sketch rows' dimension and value for `q` (a filter's value, or None for all)."""
    if q.filters:
        dim, value = q.filters[0]
        return dim, value
    return (q.group_by or ""), None


def sketches_answer(q: MetricsQuery) -> bool:
    """Whether sketches can estimate `q`: one dimension at most, hours or days."""
    return (
        q.agg == "unique_users"
        and q.interval != "minute"
        and len(q.dims) <= 1
        and (len(q.filters) <= 1)
    )


async def fetch_uniques(
    pool: Any, q: MetricsQuery, timeout_s: float, exact_below: int = EXACT_UNIQUE_EVENTS
) -> UniqueRows | None:
    """The sketches and unfolded users of `q` in one snapshot, or None when the range holds
    few enough events to count exactly (or sketches cannot answer it)."""
    if not sketches_answer(q):
        return None
    dim, value = _selection(q)
    grouped = q.group_by is not None and value is None
    async with pool.acquire(timeout=timeout_s) as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            mark = await read_watermark(conn, q.customer_id)
            marked = await any_marked(conn, q, timeout_s)
            # The hours' rollups, and the raw events of the deferred hours (which those
            # lack), counted only up to the bound: a bound on the size, not the answer.
            deferred = (
                f"(SELECT count(*) FROM (SELECT FROM {dirty_hours('$1', '$2', '$4', '$5')}"
                " LIMIT $7) AS bounded)"
                if marked
                else "$7 * 0"
            )
            events = await conn.fetchval(
                "SELECT (SELECT coalesce(sum(count), 0) FROM rollup_hour WHERE customer_id = $1"
                " AND name = $2 AND dim = $3 AND bucket >= $4 AND bucket < $5"
                f" AND ($6::text IS NULL OR dim_value = $6)) + {deferred}",
                q.customer_id, q.name, dim, q.start, q.end, value, exact_below + 1,
                timeout=timeout_s,
            )  # fmt: skip
            if events <= exact_below:
                return None
            sketches = await conn.fetch(
                """SELECT date_trunc($7, bucket, 'UTC') AS b,
                          CASE WHEN $8 AND dim = $3 THEN dim_value END AS g, sketch
                   FROM rollup_users_hour
                   WHERE customer_id = $1 AND name = $2
                     AND (dim = $3 OR ($8 AND dim = $9)) AND bucket >= $4 AND bucket < $5
                     AND ($6::text IS NULL OR dim_value = $6)""",
                q.customer_id, q.name, dim, q.start, q.end, value, q.interval, grouped,
                MISSING + dim, timeout=timeout_s,
            )  # fmt: skip
            group = (
                dimension_expr(q.group_by, "e.properties", flags="e.flags")
                if grouped
                else "NULL::text"
            )
            where = "".join(
                f" AND {dimension_expr(d, 'e.properties', flags='e.flags')} = ${i + 7}"
                for i, (d, _) in enumerate(q.filters)
            )
            raw = []
            # The events not folded, then every event of the deferred hours (whose sketches
            # lack some: store/deferred.py); a user read twice is merged once.
            sources = [("events e", "AND e.xid >= $5::text::xid8")]
            if marked:
                sources.append(
                    (dirty_hours("$1", "$2", "$3", "$4", alias="e"), "AND $5::text IS NOT NULL")
                )
            for source, unfolded in sources:
                raw += await conn.fetch(
                    f"""SELECT date_trunc($6, e.ts, 'UTC') AS b, {group} AS g,
                               array_agg(DISTINCT {IDENTIFIED_USER}) AS users
                        FROM {source} {IDENTITY_JOIN}
                        WHERE e.customer_id = $1 AND e.name = $2 AND e.ts >= $3 AND e.ts < $4
                          {unfolded} AND e.user_id IS NOT NULL{where}
                        GROUP BY 1, 2""",
                    q.customer_id, q.name, q.start, q.end, mark, q.interval,
                    *(v for _, v in q.filters), timeout=timeout_s,
                )  # fmt: skip
    return UniqueRows(
        [(r[0], r[1], r[2]) for r in sketches], [(r[0], r[1], list(r[2])) for r in raw]
    )
