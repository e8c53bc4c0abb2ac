"""The application: routes, middleware, and the lifespan that owns every background task.

The lifespan opens the pool, builds the worker's services, then runs one root task group
holding every background job: feature-flag sync, cache-invalidation listener, group-commit
writer, billing dispatcher, metrics sampler, maintenance. On shutdown intake stops first, the
writer commits what it accepted, and only then the group and the pool close.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from analytics.api import compat_posthog, compat_segment, ingest, openapi, ops, query
from analytics.api.cors import Cors
from analytics.api.errors import EXCEPTION_HANDLERS
from analytics.api.middleware import Deadline
from analytics.api.observe import Observe
from analytics.api.protocol import ProtocolGuard
from analytics.pipeline.flag_sync import FlagSync
from analytics.pipeline.gauges import sample_gauges
from analytics.pipeline.maintenance import run_maintenance
from analytics.pipeline.services import build_services
from analytics.runtime import gctune
from analytics.runtime.logs import configure_logging
from analytics.runtime.request_context import RequestContext
from analytics.runtime.supervise import supervised
from analytics.runtime.watchdog import watch_loop
from analytics.settings import Settings
from analytics.store.flag_overrides import load_overrides
from analytics.store.notify import FLAGS, INVALIDATE
from analytics.store.notify import listen as listen_notices
from analytics.store.partitions import ensure_partitions
from analytics.store.pool import connect, create_pool


def lifespan(settings: Settings, context: RequestContext):
    """The app's lifespan: every background job in one task group.

    Start order: flags, cache listener, writer, billing dispatcher. Stop order (after the
    server has stopped taking requests and finished those in flight): the writer commits
    everything it accepted, then the rest is cancelled, then the pool closes.
    """

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set (the CLI starts an embedded server)")
        pool = await create_pool(settings)
        try:
            services = app.state.services = build_services(settings, pool)
            async with pool.acquire() as conn:
                await ensure_partitions(conn, datetime.now(UTC))
            services.flags.apply(await load_overrides(pool))
            listen = functools.partial(connect, settings.listen_url, settings)
            retention = timedelta(days=settings.dedup_retention_days)
            async with (
                watch_loop(settings, context) as services.watchdog,
                anyio.create_task_group() as tg,
            ):
                # One LISTEN connection for both channels (store/notify.py: every NOTIFY
                # wakes every listening backend, so each costs the database on every commit).
                flag_sync = FlagSync(services.flags, pool)
                invalidator = services.invalidator

                async def on_up() -> None:
                    invalidator.on_up()
                    await flag_sync.load()

                notices = {INVALIDATE: invalidator.on_notification, FLAGS: flag_sync.on_notice}
                listener = functools.partial(
                    listen_notices, listen, notices, on_up=on_up, on_down=invalidator.on_down
                )
                await tg.start(listener, name="notification listener")
                tg.start_soon(supervised, "feature flags", flag_sync.run)
                await tg.start(services.writer.run, name="group-commit writer")
                tg.start_soon(supervised, "rollup job", services.rollups.run)
                if services.dispatcher is not None:
                    tg.start_soon(supervised, "billing dispatcher", services.dispatcher.run)
                gauges = functools.partial(sample_gauges, services)
                tg.start_soon(supervised, "metrics sampler", gauges)
                upkeep = functools.partial(
                    run_maintenance,
                    pool,
                    retention,
                    events_retention=timedelta(days=settings.retention_days),
                )
                tg.start_soon(supervised, "maintenance", upkeep)
                gctune.tune(settings.gc_gen0_threshold)
                try:
                    yield
                finally:
                    services.writer.close()
                    with anyio.CancelScope(shield=True):
                        await services.writer.closed.wait()
                    await services.rollups.final_fold()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await pool.close()

    return run


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    context = RequestContext()
    # Every route's handler declares its operations (api/contract.py `@operation`): the
    # OpenAPI document is generated from them, and CORS serves those declared `cors=True`.
    routes = [
        Route("/v1/events", ingest.ingest_event, methods=["POST"]),
        Route("/v1/batch", compat_segment.batch, methods=["POST"]),
        Route("/v1/metrics", query.get_metrics, methods=["GET"]),
        # Segment's and PostHog's own paths, for their SDKs (api/compat_*.py).
        *(
            Route(f"/v1/{name}", compat_segment.call(name), methods=["POST"])
            for name in compat_segment.CALLS
        ),
        *(Route(p, compat_posthog.capture, methods=["POST"]) for p in compat_posthog.PATHS),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.scrape, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[
            Middleware(ProtocolGuard),
            Middleware(Observe, context=context),
            Middleware(Cors, paths=openapi.cors_paths(routes)),
            Middleware(Deadline, timeout_s=settings.request_timeout_s),
        ],
        lifespan=lifespan(settings, context),
    )
    # No trailing-slash redirects: Starlette builds their Location from the Host header, so
    # any client could have it point elsewhere. `/v1/events/` is a plain 404.
    app.router.redirect_slashes = False
    return app


def app_from_env() -> Starlette:
    """The Hypercorn entry point (`analytics.app:app_from_env()`), one per worker process."""
    configure_logging()
    return create_app(Settings.from_env())
