"""The application: routes, error handlers, and the lifespan that owns every background task.

The lifespan opens the pool, then one root task group; every background job (for now the
group-commit writer) runs in it. On shutdown intake stops first, the writer commits what it
accepted, and only then the group and the pool close.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from analytics.api import ingest, ops, query
from analytics.api.auth import KeyCache
from analytics.api.errors import EXCEPTION_HANDLERS
from analytics.api.middleware import Deadline
from analytics.api.observe import Observe
from analytics.billing.sdk import BillingClient
from analytics.normalize import Limits
from analytics.pipeline.billing import BillingDispatcher
from analytics.pipeline.maintenance import run_maintenance
from analytics.pipeline.writer import GroupCommitWriter
from analytics.runtime import metrics
from analytics.runtime.flags import Flags
from analytics.runtime.invalidation import CHANNEL, Invalidator, QueryCache
from analytics.runtime.logs import DroppingQueueHandler, configure_logging
from analytics.runtime.offload import Offload
from analytics.runtime.ratelimit import TokenBuckets
from analytics.runtime.supervise import supervised
from analytics.runtime.watchdog import RequestContext, watch_loop
from analytics.settings import Settings
from analytics.store.keys import KeyInfo, lookup_key
from analytics.store.partitions import ensure_partitions
from analytics.store.pool import connect, create_pool

BILLING_RETRIES = 2


@dataclass
class Runtime:
    """What handlers need, built by the lifespan and reachable as `app.state.runtime`."""

    settings: Settings
    pool: asyncpg.Pool
    writer: GroupCommitWriter
    offload: Offload
    keys: KeyCache
    invalidator: Invalidator
    flags: Flags
    buckets: TokenBuckets
    event_limits: Limits
    batch_limits: Limits
    dispatcher: BillingDispatcher | None = None


def _runtime(settings: Settings, pool: asyncpg.Pool) -> Runtime:
    direct = functools.partial(connect, settings.database_url, settings)

    async def key_lookup(key: str) -> KeyInfo | None:
        async with pool.acquire(timeout=settings.acquire_timeout_s) as conn:
            return await lookup_key(conn, key)

    offload = Offload(
        {"cpu": settings.cpu_threads, "billing_sdk": settings.billing_sdk_threads, "scrape": 1}
    )
    flags = Flags(
        {
            "billing_dispatch": settings.flag_billing_dispatch,
            "enrichment": settings.flag_enrichment,
            "signature_enforcement": settings.flag_signature_enforcement,
        }
    )
    rt = Runtime(
        settings=settings,
        pool=pool,
        writer=GroupCommitWriter(
            direct,
            settings.dimensions,
            inbox=settings.writer_inbox,
            inbox_rows=settings.writer_inbox_rows,
            max_batch_rows=settings.writer_max_batch_rows,
            window_s=settings.writer_window_s,
            commit_timeout_s=settings.commit_timeout_s,
            connections=settings.writer_connections,
            usage_window_s=settings.billing_window_s,
            enrich=functools.partial(flags.enabled, "enrichment"),
        ),
        offload=offload,
        keys=KeyCache(key_lookup),
        invalidator=Invalidator(
            functools.partial(connect, settings.listen_url, settings),
            QueryCache(settings.cache_entries),
            functools.partial(pool.execute, "SELECT pg_notify($1, $2)", CHANNEL),
        ),
        flags=flags,
        buckets=TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst),
        event_limits=Limits(max_body_bytes=settings.max_event_body_bytes, max_events=1),
        batch_limits=Limits(
            max_body_bytes=settings.max_batch_body_bytes, max_events=settings.max_batch_events
        ),
    )
    if settings.billing_url:
        rt.dispatcher = BillingDispatcher(
            pool,
            offload,
            functools.partial(
                BillingClient,
                settings.billing_url,
                timeout_s=settings.billing_timeout_s,
                retries=BILLING_RETRIES,
                pool_size=settings.billing_sdk_threads,
            ),
            flags,
            window_s=settings.billing_window_s,
            poll_s=settings.billing_poll_s,
            # The SDK's own worst case (every attempt timing out, plus backoff) and a margin.
            call_timeout_s=settings.billing_timeout_s * (BILLING_RETRIES + 1) + 2,
            max_backoff_s=settings.billing_max_backoff_s,
        )
    return rt


OUTBOX_PENDING_SQL = """
SELECT (SELECT count(*) FROM usage_outbox WHERE dispatch_id IS NULL)
     + (SELECT count(*) FROM usage_dispatch WHERE sent_at IS NULL AND failed_at IS NULL)
"""


async def sample_gauges(rt: Runtime, every_s: float = 1.0, outbox_every: int = 5) -> None:
    """Sets the gauges every second (multiprocess mode has no scrape-time callbacks)."""
    tick, dropped = 0, DroppingQueueHandler.dropped
    while True:
        metrics.log_records_dropped.inc(DroppingQueueHandler.dropped - dropped)
        dropped = DroppingQueueHandler.dropped
        for s in rt.offload.stats():
            metrics.limiter_capacity.labels(s.name).set(s.capacity)
            metrics.limiter_borrowed.labels(s.name).set(s.borrowed)
            metrics.limiter_waiting.labels(s.name).set(s.waiting)
        metrics.writer_inbox_depth.set(rt.writer.depth)
        metrics.writer_inbox_capacity.set(rt.settings.writer_inbox)
        if tick % outbox_every == 0:
            pending = await rt.pool.fetchval(OUTBOX_PENDING_SQL, timeout=5)
            metrics.billing_outbox_pending.set(pending)
        tick += 1
        await anyio.sleep(every_s)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Owns every background job in one task group.

    Start order: flags, cache listener, writer, billing dispatcher. Stop order (after the
    server has stopped taking requests and finished those in flight): the writer commits
    everything it accepted, then the rest is cancelled, then the pool closes.
    """
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the CLI starts an embedded server)")
    pool = await create_pool(settings)
    try:
        rt = app.state.runtime = _runtime(settings, pool)
        async with pool.acquire() as conn:
            await ensure_partitions(conn, datetime.now(UTC))
            await rt.flags.load(conn)
        listen = functools.partial(connect, settings.listen_url, settings)
        app.state.request_context = RequestContext()
        async with (
            watch_loop(settings, app.state.request_context) as app.state.watchdog,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(supervised, "feature flags", functools.partial(rt.flags.run, listen))
            await tg.start(rt.invalidator.run, name="cache invalidation listener")
            await tg.start(rt.writer.run, name="group-commit writer")
            if rt.dispatcher is not None:
                tg.start_soon(supervised, "billing dispatcher", rt.dispatcher.run)
            tg.start_soon(supervised, "metrics sampler", functools.partial(sample_gauges, rt))
            retention = timedelta(days=settings.dedup_retention_days)
            tg.start_soon(
                supervised, "maintenance", functools.partial(run_maintenance, pool, retention)
            )
            try:
                yield
            finally:
                rt.writer.close()
                with anyio.CancelScope(shield=True):
                    await rt.writer.closed.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await pool.close()


def create_app(settings: Settings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/events", ingest.ingest_event, methods=["POST"]),
            Route("/v1/batch", ingest.ingest_batch, methods=["POST"]),
            Route("/v1/metrics", query.metrics, methods=["GET"]),
            Route("/healthz", ops.healthz, methods=["GET"]),
            Route("/readyz", ops.readyz, methods=["GET"]),
            Route("/metrics", ops.prometheus, methods=["GET"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[Middleware(Observe), Middleware(Deadline)],
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings.from_env()
    return app


def app_from_env() -> Starlette:
    """The Hypercorn entry point (`analytics.app:app_from_env()`), one per worker process."""
    configure_logging()
    return create_app(Settings.from_env())
