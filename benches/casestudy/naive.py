"""The case study's first version: `async def` handlers that block the event loop.

DELIBERATE ANTI-EXAMPLE, kept only as a baseline for the load harness. Each handler looks
asynchronous, but every step that matters runs synchronously on the loop thread:

1. the key lookup (a synchronous psycopg query),
2. the signature check and normalization (pure Python, `benches.normalize_reference`),
3. the write (dedup, events, rollups through synchronous psycopg),
4. the billing notification (the vendor's blocking SDK),

so while one request is in any of them, no other request on this worker makes progress.
`threaded.py` is the same file with those four calls moved to worker threads.

Ruff's ASYNC rules would be the guard against this, but they only know a fixed list of
blocking calls (`time.sleep`, `open`, `requests`, `subprocess`...): none of the calls below is
on it, so this file passes them untouched. That blind spot is part of the lesson.
"""

from __future__ import annotations

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
    key = authenticate(deps.pool, request.headers.get("authorization", ""), "write")  # BLOCKS
    encoding = check_media(request)
    check_length(request, deps, batch)
    body = await request.body()
    signature = request.headers.get("x-signature")
    result = normalize(deps, key, body, batch, encoding, signature, received_us)  # BLOCKS (CPU)
    inserted = duplicates = 0
    if result.accepted:
        inserted, duplicates = write_events(deps.pool, result.copy_data, now)  # BLOCKS
    notify_billing(deps, key.customer_id, inserted, now)  # BLOCKS
    return ingest_response(result, inserted, duplicates)


async def ingest_event(request: Request) -> Response:
    return await _ingest_handler(request, batch=False)


async def ingest_batch(request: Request) -> Response:
    return await _ingest_handler(request, batch=True)


async def metrics_handler(request: Request) -> Response:
    deps: Deps = request.app.state.deps
    key = authenticate(deps.pool, request.headers.get("authorization", ""), "read")  # BLOCKS
    q = parse_count_query(request, deps.settings)
    rows = query_counts(deps.pool, key.customer_id, q.name, q.interval, q.start, q.end)  # BLOCKS
    return metrics_response(q, rows)


def create_app(config: Config) -> Starlette:
    return build_app("naive", config, ingest_event, ingest_batch, metrics_handler)
