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
from datetime import UTC, datetime

import anyio
import asyncpg
from starlette.applications import Starlette
from starlette.routing import Route

from analytics.api import ingest, ops, query
from analytics.api.auth import KeyCache
from analytics.api.errors import EXCEPTION_HANDLERS
from analytics.normalize import Limits
from analytics.pipeline.writer import GroupCommitWriter
from analytics.runtime.invalidation import CHANNEL, Invalidator, QueryCache
from analytics.runtime.offload import Offload
from analytics.settings import Settings
from analytics.store.keys import lookup_key
from analytics.store.partitions import ensure_partitions
from analytics.store.pool import connect, create_pool


@dataclass
class Runtime:
    """What handlers need, built by the lifespan and reachable as `app.state.runtime`."""

    settings: Settings
    pool: asyncpg.Pool
    writer: GroupCommitWriter
    offload: Offload
    keys: KeyCache
    invalidator: Invalidator
    event_limits: Limits
    batch_limits: Limits


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the CLI starts an embedded server)")
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            await ensure_partitions(conn, datetime.now(UTC))

        async def key_lookup(key: str):
            async with pool.acquire(timeout=settings.acquire_timeout_s) as conn:
                return await lookup_key(conn, key)

        writer = GroupCommitWriter(
            functools.partial(connect, settings.database_url, settings),
            settings.dimensions,
            inbox=settings.writer_inbox,
            max_batch_rows=settings.writer_max_batch_rows,
            window_s=settings.writer_window_s,
            commit_timeout_s=settings.commit_timeout_s,
            connections=settings.writer_connections,
        )
        app.state.runtime = Runtime(
            settings=settings,
            pool=pool,
            writer=writer,
            offload=Offload({"cpu": settings.cpu_threads}),
            keys=KeyCache(key_lookup),
            invalidator=Invalidator(
                functools.partial(connect, settings.listen_url, settings),
                QueryCache(settings.cache_entries),
                functools.partial(pool.execute, "SELECT pg_notify($1, $2)", CHANNEL),
            ),
            event_limits=Limits(max_body_bytes=settings.max_event_body_bytes, max_events=1),
            batch_limits=Limits(
                max_body_bytes=settings.max_batch_body_bytes,
                max_events=settings.max_batch_events,
            ),
        )
        runtime = app.state.runtime
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.invalidator.run, name="cache invalidation listener")
            await tg.start(writer.run, name="group-commit writer")
            try:
                yield
            finally:
                # Intake has stopped (the server drains requests before lifespan shutdown);
                # the writer commits everything it accepted, then returns; the listener is
                # cancelled once the writer is done.
                writer.close()
                with anyio.CancelScope(shield=True):
                    await writer.closed.wait()
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
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings.from_env()
    return app


def app_from_env() -> Starlette:
    """The Hypercorn entry point (`analytics.app:app_from_env()`), one per worker process."""
    return create_app(Settings.from_env())
