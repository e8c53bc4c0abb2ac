"""What both case-study variants share: the blocking steps, the app and its lifespan.

Every function in the "blocking steps" section below is plain synchronous code that waits
(on PostgreSQL, on billing) or burns CPU (pure-Python normalization). The variants differ only
in where they call them: `naive` on the event loop, `threaded` in worker threads.

The database is reached through psycopg 3 (synchronous) and a `psycopg_pool.ConnectionPool`,
like the pooled engine of a synchronous ORM. Why a pool rather than one connection behind a
lock: in the naive variant it makes no difference (each step runs to completion on the loop
thread, so only one connection is ever checked out at a time, and a lock would never be
contended); in the threaded variant one locked connection would serialize every write and
turn the fix into a strawman. So both variants use the same pool, sized by `--db-pool-size`
(default 10, the real service's `pool_max_size`).

Besides the API, each app runs the project's loop watchdog (`analytics.runtime.watchdog`) and
serves what the load harness reads: `GET /metrics` (the loop-lag and stall series, under the
real service's metric names) and `GET /debug/stalls` (stalls grouped by stack, each with the
blocking line in this package and the handler line that called it).
"""

from __future__ import annotations

import functools
import hmac
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from traceback import FrameSummary
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from analytics.billing.sdk import BillingClient, BillingError
from analytics.normalize import normalize_event_name
from analytics.runtime.request_context import RequestContext
from analytics.runtime.stalls import PACKAGE_DIR
from analytics.runtime.watchdog import LoopWatchdog
from analytics.settings import Settings
from analytics.store.keys import KeyInfo
from analytics.store.keys import _hash as key_hash  # the same key format and hash as the service
from analytics.store.keys import _parse as parse_key
from analytics.store.partitions import ensure_partitions
from benches import normalize_reference as reference

HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep

STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
USAGE_WINDOW = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Config:
    """What a variant is started with (see `serve.py`)."""

    database_url: str
    billing_url: str
    #: Connections in the psycopg pool (both variants).
    db_pool_size: int = 10
    #: The billing SDK's connection pool; sized for AnyIO's default 40 worker threads, so the
    #: threaded variant keeps its connections alive too.
    billing_pool_size: int = 40
    billing_timeout_s: float = 2.0
    billing_retries: int = 2
    #: Run the loop watchdog (a stall is a heartbeat later than `stall_threshold_s`).
    watchdog: bool = True
    stall_threshold_s: float = 0.05


@dataclass
class Deps:
    """What handlers use, built by the lifespan (`request.app.state.deps`)."""

    pool: ConnectionPool
    billing: BillingClient
    settings: Settings
    event_limits: reference.Limits
    batch_limits: reference.Limits


class ApiError(Exception):
    """Answered as `{"code": ..., "message": ...}` with `status`, like the real service."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


# --- The blocking steps ----------------------------------------------------------------------


def authenticate(pool: ConnectionPool, authorization: str, scope: str) -> KeyInfo:
    """The key of an `Authorization: Bearer <key>` header, looked up in `api_keys` (one
    synchronous query per request, no cache). BLOCKS on the database."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing_key", "send Authorization: Bearer <key>")
    parsed = parse_key(key) if len(key) <= 256 else None
    row = None
    if parsed is not None:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT key_hash, scopes, signing_secret FROM api_keys"
                " WHERE customer_id = %s AND key_id = %s AND revoked_at IS NULL",
                parsed,
            ).fetchone()
    if row is None or not hmac.compare_digest(row[0], key_hash(key)):
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
    info = KeyInfo(parsed[0], parsed[1], frozenset(row[1]), (row[2],) if row[2] else ())
    if scope not in info.scopes:
        raise ApiError(403, "wrong_scope", f"this key lacks the {scope!r} scope")
    return info


def normalize(
    deps: Deps,
    key: KeyInfo,
    body: bytes,
    batch: bool,
    encoding: str,
    signature: str | None,
    received_at_us: int,
) -> reference.NormalizedBatch:
    """Signature check (when the key has a signing secret) and normalization, both in pure
    Python (`benches.normalize_reference`). BURNS CPU, holding the GIL."""
    if key.signing_keys:
        if not signature:
            raise ApiError(401, "missing_signature", "this key requires an X-Signature header")
        try:
            reference.verify_signature(
                key.signing_keys[0],
                signature,
                body,
                received_at_us // 1_000_000,
                deps.settings.signature_tolerance_s,
            )
        except reference.SignatureError as e:
            raise ApiError(401, e.code, str(e.args[1])) from None
    try:
        return reference.normalize_batch(
            body,
            received_at_us,
            customer_id=str(key.customer_id),
            content_encoding=encoding,
            limits=deps.batch_limits if batch else deps.event_limits,
        )
    except reference.NormalizeError as e:
        raise ApiError(e.status, e.code, str(e.args[1])) from None


DEDUP_SQL = """
INSERT INTO dedup (customer_id, dedup_key, first_seen)
SELECT %s, k, %s FROM unnest(%s::text[]) AS k ORDER BY k
ON CONFLICT DO NOTHING
RETURNING dedup_key
"""
EVENT_SQL = """
INSERT INTO events (customer_id, ts, name, dedup_key, event_id, received_at, user_id, value,
                    properties, flags)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
ROLLUP_SQL = """
INSERT INTO rollup_minute AS r (customer_id, name, dim, dim_value, bucket, count, sum_value)
VALUES (%s, %s, '', '', %s, %s, %s)
ON CONFLICT (customer_id, name, dim, dim_value, bucket) DO UPDATE
    SET count = r.count + excluded.count, sum_value = r.sum_value + excluded.sum_value
"""


def _at(unix_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=unix_us)


def write_events(pool: ConnectionPool, copy_data: bytes, now: datetime) -> tuple[int, int]:
    """Store the normalized rows in one transaction: dedup records (a key already seen, or seen
    earlier in this body, is a duplicate), the new events, and their minute rollups for the
    total dimension. Returns (inserted, duplicates). BLOCKS on the database."""
    rows = reference.decode_copy(copy_data)
    if not rows:
        return 0, 0
    customer_id = int(rows[0][0])
    with pool.connection() as conn:  # one transaction: committed on leaving the block
        fresh = {k for (k,) in conn.execute(DEDUP_SQL, (customer_id, now, [r[1] for r in rows]))}
        winners = []
        for row in rows:
            if row[1] in fresh:
                fresh.discard(row[1])  # first occurrence only
                winners.append(row)
        rollups: dict[tuple[str, int], list[float]] = {}
        events = []
        for _, dedup_key, event_id, name, ts, received_at, user_id, value, props, flags in winners:
            events.append(
                (
                    customer_id,
                    _at(ts),
                    name,
                    dedup_key,
                    event_id,
                    _at(received_at),
                    user_id,
                    value,
                    Jsonb(props),
                    flags,
                )
            )
            acc = rollups.setdefault((name, ts - ts % 60_000_000), [0, 0.0])
            acc[0] += 1
            acc[1] += value or 0.0
        with conn.cursor() as cur:
            if events:
                cur.executemany(EVENT_SQL, events)
            # In key order, so concurrent transactions (threaded variant) cannot deadlock.
            cur.executemany(
                ROLLUP_SQL,
                [
                    (customer_id, name, _at(bucket), count, total)
                    for (name, bucket), (count, total) in sorted(rollups.items())
                ],
            )
    return len(winners), len(rows) - len(winners)


def notify_billing(deps: Deps, customer_id: int, count: int, now: datetime) -> None:
    """Tell billing about this request's usage, once per request with its own idempotency key.
    BLOCKS on the billing service (the vendor SDK's own timeouts and retries)."""
    start = now.replace(second=0, microsecond=0)
    try:
        deps.billing.notify_usage(
            customer_id, count, start, start + USAGE_WINDOW, f"casestudy-{uuid.uuid4().hex}"
        )
    except BillingError as e:
        # The events are committed: a retry of the request is safe (they are deduplicated).
        raise ApiError(502, "billing_unavailable", f"events stored, billing failed: {e}") from None


def query_counts(
    pool: ConnectionPool, customer_id: int, name: str, interval: str, start: datetime, end: datetime
) -> list[tuple[datetime, int]]:
    """Event counts per `interval` bucket in [start, end) from the minute rollups (total
    dimension). BLOCKS on the database."""
    with pool.connection() as conn:
        return conn.execute(
            "SELECT date_trunc(%s, bucket, 'UTC') AS t, sum(count)::bigint FROM rollup_minute"
            " WHERE customer_id = %s AND name = %s AND dim = '' AND dim_value = ''"
            " AND bucket >= %s AND bucket < %s GROUP BY 1 ORDER BY 1",
            (interval, customer_id, name, start, end),
        ).fetchall()


# --- Request parsing (cheap, no I/O) ------------------------------------------------------------


def check_media(request: Request) -> str:
    """JSON only (415 otherwise); returns the Content-Encoding (gzip or identity)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")
    return encoding


def check_length(request: Request, deps: Deps, batch: bool) -> None:
    cap = deps.settings.max_batch_body_bytes if batch else deps.settings.max_event_body_bytes
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise ApiError(400, "invalid_content_length", "Content-Length must be a number")
    if int(declared) > cap:
        raise ApiError(413, "body_too_large", f"body is over {cap} bytes")


def ingest_response(result: reference.NormalizedBatch, inserted: int, duplicates: int) -> Response:
    return json_response(
        {
            "accepted": inserted,
            "duplicates": duplicates,
            "rejected": [
                {"index": i, "code": code, "message": message, "retryable": False}
                for i, code, message in result.rejected
            ],
        }
    )


@dataclass(frozen=True)
class CountQuery:
    name: str
    interval: str
    start: datetime
    end: datetime


def _instant(raw: str, what: str) -> datetime:
    """RFC 3339 with an offset, or epoch milliseconds."""
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        parsed = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(400, "invalid_time", f"{what} must be RFC 3339 with an offset, or epoch ms")
    return parsed.astimezone(UTC)


def _floor(t: datetime, interval: str) -> datetime:
    t = t.replace(second=0, microsecond=0)
    if interval in ("hour", "day"):
        t = t.replace(minute=0)
    if interval == "day":
        t = t.replace(hour=0)
    return t


def parse_count_query(request: Request, settings: Settings) -> CountQuery:
    """`event` (required), `from`/`to` (default: the last 24 hours), `interval` (minute, hour
    or day; default hour). Counts of the total dimension only."""
    params = request.query_params
    raw_event = params.get("event")
    if not raw_event:
        raise ApiError(400, "missing_event", "the event parameter is required")
    try:
        name = normalize_event_name(raw_event)
    except ValueError as e:
        raise ApiError(400, "invalid_event", str(e)) from None
    interval = params.get("interval", "hour")
    if interval not in STEP:
        raise ApiError(400, "invalid_interval", "interval must be one of minute, hour, day")
    end = _instant(params["to"], "to") if "to" in params else datetime.now(UTC)
    start = _instant(params["from"], "from") if "from" in params else end - timedelta(days=1)
    if start >= end:
        raise ApiError(400, "invalid_range", "from must be before to")
    start = _floor(start, interval)
    buckets = math.ceil((end - start) / STEP[interval])
    if buckets > settings.max_buckets:
        raise ApiError(400, "too_many_buckets", f"at most {settings.max_buckets} buckets")
    return CountQuery(name, interval, start, start + buckets * STEP[interval])


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics_response(q: CountQuery, rows: list[tuple[datetime, int]]) -> Response:
    """The real service's `/v1/metrics` shape (agg count, no grouping), every bucket present."""
    counts = {t: n for t, n in rows}
    step = STEP[q.interval]
    times = [q.start + i * step for i in range((q.end - q.start) // step)]
    return json_response(
        {
            "event": q.name,
            "interval": q.interval,
            "agg": "count",
            "from": _iso(q.start),
            "to": _iso(q.end),
            "group_by": None,
            "filters": [],
            "series": [
                {
                    "group": None,
                    "points": [{"t": _iso(t), "value": counts.get(t, 0)} for t in times],
                }
            ],
        }
    )


# --- Operations: health, loop metrics, stall reports ----------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def _ours(f: FrameSummary) -> bool:
    return f.filename.startswith((HERE, PACKAGE_DIR))


def _where(f: FrameSummary | None) -> str | None:
    if f is None:
        return None
    return f"{os.path.relpath(f.filename)}:{f.lineno} in {f.name}"


def stall_groups(watchdog: LoopWatchdog, variant_file: str) -> list[dict[str, Any]]:
    """Stalls merged by stack, most total time first.

    `handler_line`: the innermost frame in the variant's module (the handler line that
    blocked); `blocking_line`: the innermost frame below it in this package or in `analytics`
    (the blocking step, e.g. `write_events`, `notify_usage`, a line of the reference
    normalizer); `innermost`: the frame the loop thread was in (often in a library). Without
    a handler frame (both None) the loop was in its own machinery when it missed the deadline:
    in the threaded variant, typically waiting for the GIL held by worker threads. An empty
    stack (`innermost` None) is a stall the watchdog thread could not see while it lasted.
    """
    out = []
    for g in list(watchdog.groups.values()):
        stack = g.stack
        at = max((i for i, f in enumerate(stack) if f.filename == variant_file), default=None)
        below = [f for f in stack[at + 1 :] if _ours(f)] if at is not None else []
        out.append(
            {
                "signature": g.signature,
                "count": g.count,
                "total_s": round(g.total_s, 6),
                "max_s": round(g.max_s, 6),
                "handler_line": _where(stack[at] if at is not None else None),
                "blocking_line": _where(below[-1] if below else None),
                "innermost": _where(stack[-1] if stack else None),
            }
        )
    out.sort(key=lambda g: -g["total_s"])
    return out


async def debug_stalls(request: Request) -> Response:
    watchdog: LoopWatchdog | None = request.app.state.watchdog
    if watchdog is None:
        return json_response({"watchdog": False, "stalls_total": 0, "groups": []})
    variant_file = os.path.join(HERE, f"{request.app.state.variant}.py")
    groups = await anyio.to_thread.run_sync(stall_groups, watchdog, variant_file)
    return json_response(
        {
            "watchdog": True,
            "variant": request.app.state.variant,
            "threshold_s": watchdog.threshold,
            "stalls_total": watchdog.stalls_total,
            "groups": groups,
        }
    )


class WatchdogCollector:
    """The watchdog's figures under the real service's metric names."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def collect(self):  # type: ignore[no-untyped-def]
        wd: LoopWatchdog | None = self.app.state.watchdog
        if wd is None:
            return
        for name, doc, hist in (
            ("analytics_loop_lag_seconds", "Lateness of every watchdog heartbeat tick", wd.lag),
            (
                "analytics_loop_stall_duration_seconds",
                "Full duration of every event-loop stall",
                wd.stall_durations,
            ),
        ):
            buckets = [("+Inf" if math.isinf(b) else repr(b), n) for b, n in hist.buckets]
            yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)
        yield CounterMetricFamily(
            "analytics_loop_stalls", "Event-loop stalls over the threshold", wd.stalls_total
        )
        yield GaugeMetricFamily(
            "analytics_loop_stall_in_progress", "1 while a stall is in progress", int(wd.in_stall)
        )


async def prometheus(request: Request) -> Response:
    body = generate_latest(request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestLabel:
    """Pure ASGI middleware: ties the request (path, `X-Scenario`) to its coroutine frame, so
    a stall report names the request the loop was serving."""

    def __init__(self, app: ASGIApp, context: RequestContext) -> None:
        self.app, self.context = app, context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scenario = next((v for k, v in scope["headers"] if k == b"x-scenario"), b"none")
        self.context.enter(path=scope["path"], scenario=scenario.decode("latin-1")[:64])
        try:
            await self.app(scope, receive, send)
        finally:
            self.context.exit()


# --- The app ----------------------------------------------------------------------------------


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response({"code": exc.code, "message": exc.message}, exc.status)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    config: Config = app.state.config
    # The real service creates the monthly partitions of `events` at startup: so do we, so
    # that both write to the same partitions (a one-off call, before serving).
    conn = await asyncpg.connect(config.database_url)
    try:
        await ensure_partitions(conn, datetime.now(UTC))
    finally:
        await conn.close()
    pool = ConnectionPool(
        config.database_url,
        min_size=config.db_pool_size,
        max_size=config.db_pool_size,
        open=False,
        timeout=10.0,
        name="casestudy",
    )
    await anyio.to_thread.run_sync(functools.partial(pool.open, wait=True, timeout=15.0))
    billing = BillingClient(
        config.billing_url,
        timeout_s=config.billing_timeout_s,
        retries=config.billing_retries,
        pool_size=config.billing_pool_size,
    )
    settings = Settings()
    app.state.deps = Deps(
        pool=pool,
        billing=billing,
        settings=settings,
        event_limits=reference.Limits(max_body_bytes=settings.max_event_body_bytes, max_events=1),
        batch_limits=reference.Limits(
            max_body_bytes=settings.max_batch_body_bytes, max_events=settings.max_batch_events
        ),
    )
    try:
        if config.watchdog:
            async with LoopWatchdog(
                threshold=config.stall_threshold_s,
                context=app.state.request_context,
                c_fallback=False,
            ) as watchdog:
                app.state.watchdog = watchdog
                yield
        else:
            yield
    finally:
        app.state.watchdog = None
        billing.close()
        await anyio.to_thread.run_sync(pool.close)


Handler = Callable[[Request], Awaitable[Response]]


def build_app(
    variant: str, config: Config, ingest_event: Handler, ingest_batch: Handler, metrics: Handler
) -> Starlette:
    """The app of a variant: its three API handlers plus the shared operations endpoints."""
    context = RequestContext()
    app = Starlette(
        routes=[
            Route("/v1/events", ingest_event, methods=["POST"]),
            Route("/v1/batch", ingest_batch, methods=["POST"]),
            Route("/v1/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Route("/debug/stalls", debug_stalls, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error},
        middleware=[Middleware(RequestLabel, context=context)],
        lifespan=lifespan,
    )
    app.state.variant = variant
    app.state.config = config
    app.state.request_context = context
    app.state.watchdog = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WatchdogCollector(app))  # type: ignore[arg-type]
    app.state.registry = registry
    return app


def received_now() -> tuple[int, datetime]:
    """The receive time as unix µs and as a datetime."""
    us = time.time_ns() // 1000
    return us, _at(us)
