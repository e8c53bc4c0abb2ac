"""A plain COPY of the same rows, the ceiling of batches (`--modes copy` of the load harness).

Per `POST /v1/batch`, and nothing else: read the body; normalize it with the service's Rust
normalizer and limits (inline when small, on a worker thread under a `cpu` limiter of the
service's size when large, as api/ingest.py does); COPY the rows straight into `events` with
the binary framing of store/group_commit.py, one COPY statement per request, which is its
own transaction, committed (under the server's `synchronous_commit`, the service's too)
before the answer `{"accepted": n, "duplicates": 0, "rejected": [...]}`. No key lookup, no
signature check, no dedup, no rollups, no outbox, no watchdog: what the service adds is
measured against this. Every row goes to one customer, fixed at start (`REFERENCE_CUSTOMER_ID`,
the load test's). `GET /metrics` exports its commits as the service does
(`analytics_writer_batch_rows`), so the harness gets PostgreSQL's CPU per commit for it too.
"""

from __future__ import annotations

import functools
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import asyncpg
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.normalize import COPY_COLUMNS, Limits, NormalizeError, normalize_batch
from analytics.settings import Settings
from analytics.store.group_commit import COPY_HEADER, COPY_TRAILER
from analytics.store.pool import create_pool

CUSTOMER_ENV = "REFERENCE_CUSTOMER_ID"
_FIELD_SIZE = struct.Struct("!i")


def customer_field(customer_id: int) -> str | None:
    """The `customer_id` to hand the normalizer so that the text field it writes first in
    every tuple is, byte for byte, the bigint field `events.customer_id` takes (its 8
    big-endian bytes; binary COPY reads a length and bytes, whatever produced them). The
    normalizer writes the COPY tuples of `staging`, whose customer id is text; this spares
    rewriting every tuple. None when the bytes are not all ASCII (no valid `str` of them)."""
    raw = struct.pack("!q", customer_id)
    return raw.decode("ascii") if raw.isascii() else None


def as_bigint_rows(copy_data: bytes, customer_id: int) -> bytes:
    """COPY tuples normalized with `str(customer_id)` as their customer, rewritten with it as
    the bigint `events` stores: the slow way (a walk over every field, ~2 µs a row), for the
    ids `customer_field` cannot carry. ValueError if a tuple has another customer."""
    text = str(customer_id).encode()
    head = struct.pack("!hi", len(COPY_COLUMNS), len(text)) + text
    bigint = struct.pack("!hiq", len(COPY_COLUMNS), 8, customer_id)
    out, pos, end = [], 0, len(copy_data)
    while pos < end:
        if not copy_data.startswith(head, pos):
            raise ValueError(f"tuple at byte {pos} is not customer {customer_id}'s")
        start, pos = pos, pos + 2
        for _ in COPY_COLUMNS:
            (size,) = _FIELD_SIZE.unpack_from(copy_data, pos)
            pos += 4 + max(size, 0)  # -1 is NULL: no bytes follow
        out += (bigint, copy_data[start + len(head) : pos])
    return b"".join(out)


def encode(
    body: bytes, received_us: int, customer_id: int, encoding: str, limits: Limits
) -> tuple[int, list[tuple[int, str, str]], bytes]:
    """(accepted, rejected, binary COPY file for `events`) of one body. Raises
    NormalizeError when the body as a whole is refused. The Rust part releases the GIL."""
    field = customer_field(customer_id)
    result = normalize_batch(
        body,
        received_us,
        customer_id=str(customer_id) if field is None else field,
        content_encoding=encoding,
        limits=limits,
    )
    rows = result.copy_data if field is not None else as_bigint_rows(result.copy_data, customer_id)
    return result.accepted, result.rejected, b"".join((COPY_HEADER, rows, COPY_TRAILER))


def _answer(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def ingest_batch(request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    work = functools.partial(
        encode, body, time.time_ns() // 1000, state.customer_id, encoding, state.limits
    )
    try:
        if len(body) <= settings.inline_normalize_bytes:
            accepted, rejected, data = work()
        else:
            accepted, rejected, data = await anyio.to_thread.run_sync(work, limiter=state.cpu)
    except NormalizeError as e:
        return _answer({"code": e.code, "message": str(e.args[1])}, e.status)
    if accepted:
        t0 = time.perf_counter()
        try:
            async with state.pool.acquire(timeout=settings.acquire_timeout_s) as conn:
                await conn.copy_to_table(
                    "events",
                    # A buffer, sent as is (bytes would be taken for a path, a file-like
                    # object read in a thread: asyncpg's run_in_executor, per 512 KB).
                    source=memoryview(data),
                    columns=list(COPY_COLUMNS),
                    format="binary",
                    timeout=settings.commit_timeout_s,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return _answer({"code": "write_failed", "message": f"{type(e).__name__}: {e}"}, 503)
        state.commit_seconds.observe(time.perf_counter() - t0)
        state.commit_rows.observe(accepted)
    return _answer(
        {
            "accepted": accepted,
            "duplicates": 0,
            "rejected": [
                {"index": i, "code": code, "message": message, "retryable": False}
                for i, code, message in rejected
            ],
        }
    )


async def ready(request: Request) -> Response:
    return Response(b"ok", media_type="text/plain")


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.cpu = anyio.CapacityLimiter(app.state.settings.cpu_threads)
    app.state.pool = await create_pool(app.state.settings)
    try:
        yield
    finally:
        await app.state.pool.close()


def create_app(settings: Settings | None = None, customer_id: int | None = None) -> Starlette:
    """The app, for `customer_id` on `settings.database_url` (default: from the environment,
    `DATABASE_URL` and `REFERENCE_CUSTOMER_ID`)."""
    settings = settings or Settings.from_env()
    app = Starlette(
        routes=[
            Route("/v1/batch", ingest_batch, methods=["POST"]),
            Route("/healthz", ready, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.customer_id = int(os.environ[CUSTOMER_ENV]) if customer_id is None else customer_id
    app.state.limits = Limits(
        max_body_bytes=settings.max_batch_body_bytes, max_events=settings.max_batch_events
    )
    registry = CollectorRegistry(auto_describe=False)
    app.state.registry = registry
    app.state.commit_rows = Histogram(
        "analytics_writer_batch_rows",
        "Rows per commit (one COPY per request)",
        buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
        registry=registry,
    )
    app.state.commit_seconds = Histogram(
        "analytics_writer_commit_seconds", "COPY latency, commit included", registry=registry
    )
    return app
