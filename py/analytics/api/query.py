"""`GET /v1/metrics`: a time series of count, sum or unique users for one event name.

Every bucket of the range is present (zero when empty), per group when grouped. Ranges and
bucket counts are capped so a query is refused with a 400, never turned into a slow scan.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
from starlette.requests import Request
from starlette.responses import Response

from analytics.api.auth import authenticate, rate_limit
from analytics.api.contract import AUTH_CODES, Parameters, operation
from analytics.api.dberrors import database_errors
from analytics.api.errors import ApiError
from analytics.api.groups import combine, estimated, rank
from analytics.api.state import services_of
from analytics.normalize import hll_standard_error, normalize_event_name
from analytics.pipeline.services import Services
from analytics.runtime import prometheus
from analytics.runtime.querycache import Entry
from analytics.settings import Settings
from analytics.store.series import AGGS, INTERVALS, MetricsQuery, fetch_series
from analytics.store.uniques import fetch_uniques

STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_GROUPS = 100

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The instants a query may name. No event is older than the epoch (the normalizer refuses
#: it); a year's margin before the end of `datetime` keeps the bucket math (flooring,
#: rounding up to whole buckets) inside `datetime`.
EARLIEST, LATEST = EPOCH, datetime(9999, 1, 1, tzinfo=UTC)
#: Epoch milliseconds: ASCII digits only (`str.isdigit` also takes "²"), and few enough of
#: them that `int()` is cheap (16 digits reach far past LATEST).
_EPOCH_MS = re.compile(r"-?[0-9]{1,16}")
_LIMIT = re.compile(r"[0-9]{1,3}")


def _instant(raw: str, what: str) -> datetime:
    """RFC 3339 (an offset is required) or integer epoch milliseconds, in UTC, and within
    EARLIEST..LATEST."""
    try:
        if _EPOCH_MS.fullmatch(raw):
            return _supported(EPOCH + timedelta(milliseconds=int(raw)), what)
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is not None:
            return _supported(parsed.astimezone(UTC), what)
    except (ValueError, OverflowError):  # OverflowError: beyond datetime's range once in UTC
        pass
    raise ApiError(400, "invalid_time", f"{what} must be RFC 3339 with an offset, or epoch ms")


def _supported(t: datetime, what: str) -> datetime:
    """`t`, refused unless within EARLIEST..LATEST (before any arithmetic on it)."""
    if not EARLIEST <= t <= LATEST:
        raise ApiError(
            400, "invalid_time", f"{what} must lie within {_iso(EARLIEST)}..{_iso(LATEST)}"
        )
    return t


def _floor(t: datetime, interval: str) -> datetime:
    if interval == "minute":
        return t.replace(second=0, microsecond=0)
    if interval == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_query(request: Request, customer_id: int) -> MetricsQuery:
    settings = services_of(request).settings
    params = request.query_params
    for name in params:
        if name not in QUERY_PARAMETERS:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter {name!r}")
        if name != "filter" and len(params.getlist(name)) > 1:
            # Which one would count? Refused rather than guessed (only `filter` repeats).
            raise ApiError(400, "repeated_parameter", f"{name} may be given once")
    raw_event = params.get("event")
    if not raw_event:
        raise ApiError(400, "missing_event", "the event parameter is required")
    try:
        name = normalize_event_name(raw_event)
    except ValueError as e:
        raise ApiError(400, "invalid_event", str(e)) from None
    interval = params.get("interval", "hour")
    if interval not in INTERVALS:
        raise ApiError(400, "invalid_interval", f"interval must be one of {', '.join(INTERVALS)}")
    agg = params.get("agg", "count")
    if agg not in AGGS:
        raise ApiError(400, "invalid_agg", f"agg must be one of {', '.join(AGGS)}")

    end = _instant(params["to"], "to") if "to" in params else datetime.now(UTC)
    if "from" in params:
        start = _instant(params["from"], "from")
    else:
        start = _supported(end - timedelta(days=1), "from (by default a day before to)")
    if start >= end:
        raise ApiError(400, "invalid_range", "from must be before to")
    if end - start > timedelta(days=settings.max_range_days):
        raise ApiError(
            400, "range_too_large", f"the range may span at most {settings.max_range_days} days"
        )
    start = _floor(start, interval)
    buckets = -(-(end - start) // STEP[interval])
    if buckets > settings.max_buckets:
        raise ApiError(
            400,
            "too_many_buckets",
            f"{buckets} {interval} buckets requested, at most {settings.max_buckets}",
        )

    def dimension(dim: str) -> str:
        if dim not in settings.dimensions:
            known = ", ".join(settings.dimensions)
            raise ApiError(400, "unknown_dimension", f"unknown dimension {dim!r}; use {known}")
        return dim

    group_by = params.get("group_by")
    filters = []
    for raw in params.getlist("filter"):
        dim, sep, value = raw.partition(":")
        if not sep:
            raise ApiError(400, "invalid_filter", "filter must be DIM:VALUE")
        if "\x00" in value:  # PostgreSQL text cannot hold U+0000 (nor can a stored value)
            raise ApiError(400, "invalid_filter", "a filter value must not contain NUL")
        filters.append((dimension(dim), value))
    return MetricsQuery(
        customer_id=customer_id,
        name=name,
        interval=interval,
        start=start,
        end=start + buckets * STEP[interval],
        agg=agg,
        group_by=dimension(group_by) if group_by else None,
        filters=tuple(filters),
    )


#: The query parameters `parse_query` takes (the OpenAPI document lists these).
QUERY_PARAMETERS = ("event", "from", "to", "interval", "group_by", "filter", "agg", "limit")


def query_parameters(settings: Settings) -> Parameters:
    """The parameters of `GET /v1/metrics` as the OpenAPI document declares them."""
    time: dict = {"type": "string", "description": "RFC 3339 with an offset, or epoch ms"}
    dim = {"type": "string", "enum": list(settings.dimensions)}
    declared: Parameters = {
        "event": ("the event name (normalized as ingestion does)", {"type": "string"}, True),
        "from": ("start (default: a day before `to`)", time, False),
        "to": (f"end (default: now); a range spans <= {settings.max_range_days} days", time, False),
        "interval": ("bucket size (default hour)", {"enum": list(INTERVALS)}, False),
        "group_by": ("a dimension to group by", dim, False),
        "filter": ("DIM:VALUE, repeatable", {"type": "string"}, False),
        "agg": ("aggregation (default count)", {"enum": list(AGGS)}, False),
        "limit": (
            "groups kept (default 20)",
            {"type": "integer", "minimum": 1, "maximum": MAX_GROUPS},
            False,
        ),
    }
    assert tuple(declared) == QUERY_PARAMETERS, "declare every parameter parse_query takes"
    return declared


def _limit(raw: str) -> int:
    if not (_LIMIT.fullmatch(raw) and 1 <= int(raw) <= MAX_GROUPS):
        raise ApiError(400, "invalid_limit", f"limit must be 1-{MAX_GROUPS}")
    return int(raw)


@operation(
    "GET",
    "A time series of one event: count, sum or unique users, per bucket (and group)",
    parameters=query_parameters,
    result="Series",
    codes=(
        *AUTH_CODES,
        "publishable_key_cannot_read",
        "unknown_parameter",
        "repeated_parameter",
        "missing_event",
        "invalid_event",
        "invalid_interval",
        "invalid_agg",
        "invalid_time",
        "invalid_range",
        "range_too_large",
        "too_many_buckets",
        "unknown_dimension",
        "invalid_filter",
        "invalid_limit",
    ),
    security=("bearer",),
    tags=["query"],
)
async def get_metrics(request: Request) -> Response:
    """Closed ranges are served from the cache (after the invalidation barrier); ranges that
    include the current bucket are always computed. 503 while the database is unreachable."""
    svc = services_of(request)
    key = await authenticate(request, svc.keys, "read")
    await rate_limit(svc.buckets, key)
    q = parse_query(request, key.customer_id)
    limit = _limit(request.query_params.get("limit", "20"))
    with database_errors("query"):
        body = await _cached_or_rendered(svc, q, limit)
    return Response(body, media_type="application/json")


async def _cached_or_rendered(svc: Services, q: MetricsQuery, limit: int) -> bytes:
    closed = q.end <= _floor(datetime.now(UTC), q.interval)
    if not (closed and await svc.invalidator.barrier()):
        return await _render(svc, q, limit)
    cache = svc.invalidator.cache
    cache_key = (q, limit)
    body = cache.get(cache_key)
    if body is not None:
        prometheus.cache_hits.inc()
    else:
        prometheus.cache_misses.inc()
        generation = cache.generation(q.customer_id, q.name)
        body = await _render(svc, q, limit)
        cache.put(cache_key, Entry.of(q.customer_id, q.name, q.start, q.end, body), generation)
    return body


async def _render(svc: Services, q: MetricsQuery, limit: int) -> bytes:
    step = STEP[q.interval]
    times = [q.start + i * step for i in range((q.end - q.start) // step)]
    timeout = svc.settings.command_timeout_s
    approximate: dict[str, object] = {}
    uniques = await fetch_uniques(svc.pool, q, timeout) if q.agg == "unique_users" else None
    if uniques is not None:
        groups = await svc.offload.run("cpu", estimated, uniques, times, q)
        approximate = {"approximate": True, "relative_standard_error": hll_standard_error()}
    else:
        groups = combine(await fetch_series(svc.pool, q, timeout), times, q)
        if q.agg == "unique_users":
            approximate = {"approximate": False}
    stamps = [_iso(t) for t in times]  # once, not once per group
    series = [
        {
            "group": g.group,
            **({"other": g.other} if g.other else {}),
            "points": [{"t": t, "value": v} for t, v in zip(stamps, g.values(q.agg), strict=True)],
        }
        for g in rank(groups, limit, q.agg)
    ]
    return orjson.dumps(
        {
            "event": q.name,
            "interval": q.interval,
            "agg": q.agg,
            "from": _iso(q.start),
            "to": _iso(q.end),
            "group_by": q.group_by,
            "filters": [{"dimension": d, "value": v} for d, v in q.filters],
            "series": series,
            **approximate,
        }
    )
