"""The case study's fix: `naive.py` with every blocking step moved to a worker thread.

Line for line the same handlers as `naive.py`; the four blocking calls (key lookup,
signature check and normalization, the write, the billing notification) and the metrics
query each go through `anyio.to_thread.run_sync` (what Starlette's `run_in_threadpool` and
the case study's `asyncio.to_thread` do), under AnyIO's default thread limiter (40 threads,
shared by every call). Nothing else changed: same driver, same pool, same SDK, same SQL.

The loop stays free, but each request still holds a thread (and the GIL, while it
normalizes in Python) for the whole blocking call.
"""

from __future__ import annotations

from anyio.to_thread import run_sync
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from benches.casestudy.common import (
    Config,
    Deps,
    authenticate,
    build_app,
    check_length,
    check_media,
    ingest_response,
    metrics_response,
    normalize,
    notify_billing,
    parse_count_query,
    query_counts,
    received_now,
    write_events,
)


async def _ingest_handler(request: Request, batch: bool) -> Response:
    deps: Deps = request.app.state.deps
    received_us, now = received_now()
    key = await run_sync(authenticate, deps.pool, request.headers.get("authorization", ""), "write")
    encoding = check_media(request)
    check_length(request, deps, batch)
    body = await request.body()
    signature = request.headers.get("x-signature")
    result = await run_sync(normalize, deps, key, body, batch, encoding, signature, received_us)
    inserted = duplicates = 0
    if result.accepted:
        inserted, duplicates = await run_sync(write_events, deps.pool, result.copy_data, now)
    await run_sync(notify_billing, deps, key.customer_id, inserted, now)
    return ingest_response(result, inserted, duplicates)


async def ingest_event(request: Request) -> Response:
    return await _ingest_handler(request, batch=False)


async def ingest_batch(request: Request) -> Response:
    return await _ingest_handler(request, batch=True)


async def metrics_handler(request: Request) -> Response:
    deps: Deps = request.app.state.deps
    key = await run_sync(authenticate, deps.pool, request.headers.get("authorization", ""), "read")
    q = parse_count_query(request, deps.settings)
    rows = await run_sync(
        query_counts, deps.pool, key.customer_id, q.name, q.interval, q.start, q.end
    )
    return metrics_response(q, rows)


def create_app(config: Config) -> Starlette:
    return build_app("threaded", config, ingest_event, ingest_batch, metrics_handler)
