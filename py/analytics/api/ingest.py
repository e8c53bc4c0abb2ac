"""`POST /v1/events` and `POST /v1/batch`.

Cheap guards first (key, scope, media type, encoding, declared size) before the body is
read; the body is read under its cap; the signature is checked; the Rust normalizer turns
it into COPY tuples (inline when small, on a `cpu` worker thread when large, the GIL
released either way); the writer commits; only then the response.

`/v1/events` takes one event: refused, it answers 400 with the event's code (a batch lists
its rejections in a 200 instead), and a body holding several is pointed to `/v1/batch`.
The operations are declared for the OpenAPI document in api/contract.py.
"""

from __future__ import annotations

import functools
import time

from starlette.requests import Request
from starlette.responses import Response

from analytics.api.auth import authenticate, rate_limit
from analytics.api.contract import INGEST_CODES, operation
from analytics.api.errors import ApiError, json_response
from analytics.api.observe import timed
from analytics.api.state import services_of
from analytics.normalize import (
    NormalizedBatch,
    NormalizeError,
    SignatureError,
    normalize_batch,
    verify_signature,
)
from analytics.pipeline.writer import Overloaded, Unstorable, WriteFailed
from analytics.runtime import prometheus

JSON_TYPES = ("application/json",)
_ONE_EVENT = (
    "POST /v1/events takes one event object; several go to POST /v1/batch"
    ' ({"events": [...]} or NDJSON)'
)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson")


def _media(request: Request, batch: bool) -> bool:
    """Validates Content-Type; returns whether the body is NDJSON."""
    raw = request.headers.get("content-type", "")
    media, *params = (p.strip().lower() for p in raw.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name == "charset" and value.strip('"') not in ("utf-8", "utf8"):
            raise ApiError.of("unsupported_charset", "bodies must be UTF-8")
    if media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return False
    if batch and media in NDJSON_TYPES:
        return True
    allowed = "application/json" + (" or application/x-ndjson" if batch else "")
    hint = "; NDJSON (several events) goes to POST /v1/batch" if media in NDJSON_TYPES else ""
    raise ApiError.of("unsupported_media_type", f"Content-Type must be {allowed}{hint}")


def encoding_of(request: Request) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError.of("unsupported_encoding", "Content-Encoding must be gzip or identity")
    return encoding


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # ASCII digits only ("²".isdigit() is true), and few enough for int() to take.
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError.of("invalid_content_length", "Content-Length must be a number")
        if len(declared) > 18 or int(declared) > cap:
            raise ApiError.of("body_too_large", f"body is over {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError.of("body_too_large", f"body is over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _ingest(request: Request, batch: bool) -> Response:
    svc = services_of(request)
    settings = svc.settings
    with timed(request, "auth"):
        key = await authenticate(request, svc.keys, "write")
        await rate_limit(svc.buckets, key)
    ndjson = _media(request, batch)
    encoding = encoding_of(request)
    cap = settings.max_batch_body_bytes if batch else settings.max_event_body_bytes
    with timed(request, "read"):
        body = await read_body(request, cap)
    inline = len(body) <= settings.inline_normalize_bytes

    signed_at = None  # the verified signature's time: a replay of the request then dedups
    if key.signing_keys and svc.flags.enabled("signature_enforcement"):
        header = request.headers.get("x-signature")
        if not header:
            raise ApiError.of(
                "missing_signature",
                "this key requires an X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of"
                ' "<t>.<body>" keyed with the signing secret as printed>',
            )
        check = functools.partial(
            verify_signature,
            key.signing_keys,
            header,
            body,
            int(time.time()),
            settings.signature_tolerance_s,
        )
        try:
            with timed(request, "signature"):
                signed_at = check() if inline else await svc.offload.run("cpu", check)
        except SignatureError as e:
            raise ApiError(e.status, e.code, str(e.args[1])) from None

    normalize = functools.partial(
        normalize_batch,
        body,
        time.time_ns() // 1000,
        customer_id=str(key.customer_id),
        content_encoding=encoding,
        ndjson=ndjson,
        limits=svc.batch_limits if batch else svc.event_limits,
        signed_at=signed_at,
    )
    try:
        with timed(request, "normalize"):
            # Small bodies take microseconds in Rust: cheaper inline than a thread hop.
            result = normalize() if inline else await svc.offload.run("cpu", normalize)
    except NormalizeError as e:
        message = str(e.args[1])
        if not batch and e.code in ("too_many_events", "invalid_shape"):
            message += f"; {_ONE_EVENT}"
        raise ApiError(e.status, e.code, message) from None
    if not batch and result.rejected:  # the one event, refused: the request failed
        _, code, message = result.rejected[0]
        prometheus.rejections.labels(code).inc()
        raise ApiError.of(code, message)
    inserted, duplicates = await commit(request, result)
    return json_response(answer(result, inserted, duplicates))


async def commit(request: Request, result: NormalizedBatch) -> tuple[int, int]:
    """Hands the accepted rows to the group-commit writer and waits for the commit: (newly
    stored, duplicates). The writer's refusals become their API errors."""
    for _, code, _ in result.rejected:
        prometheus.rejections.labels(code).inc()
    inserted = duplicates = 0
    if result.accepted:
        try:
            with timed(request, "commit_wait"):
                writer = services_of(request).writer
                inserted, duplicates = await writer.submit(result.copy_data, result.accepted)
        except Overloaded as e:
            raise ApiError(
                503,
                "overloaded",
                "ingestion is saturated; retry later",
                {"Retry-After": str(e.retry_after_s)},
            ) from None
        except Unstorable:
            raise ApiError(
                422,
                "unstorable_event",
                "the database cannot store these events (e.g. a value whose sum would overflow);"
                " sending them again fails the same way",
            ) from None
        except WriteFailed:
            raise ApiError(
                503, "write_failed", "the events were not stored; retry", {"Retry-After": "1"}
            ) from None
    if inserted:  # each counter update is a locked write to a shared file (multiprocess)
        prometheus.events_accepted.inc(inserted)
    if duplicates:
        prometheus.events_duplicate.inc(duplicates)
    return inserted, duplicates


def answer(result: NormalizedBatch, inserted: int, duplicates: int) -> dict[str, object]:
    return {
        "accepted": inserted,
        "duplicates": duplicates,
        "rejected": [
            {"index": i, "code": code, "message": message, "retryable": False}
            for i, code, message in result.rejected
        ],
    }


_ANSWER = (
    "Answered after commit: `accepted` counts events newly stored, `duplicates` valid events"
    " already stored (same `event_id`, or content fingerprint, for this customer)."
)


@operation(
    "POST",
    "Send one event",
    description="One event object. Refused, it answers 400 with the event's code. " + _ANSWER,
    body={"application/json": "Event"},
    result="IngestResult",
    codes=INGEST_CODES,
    security=("bearer", "signature"),
    cors=True,
    tags=["ingest"],
)
async def ingest_event(request: Request) -> Response:
    return await _ingest(request, batch=False)


@operation(
    "POST",
    "Send a batch of events",
    description="A JSON batch or NDJSON; `Content-Encoding: gzip` accepted. Refused events are"
    " listed in `rejected` (by index); the others are stored. " + _ANSWER,
    body={"application/json": "Batch", "application/x-ndjson": "NdjsonBatch"},
    result="IngestResult",
    codes=INGEST_CODES,
    security=("bearer", "signature"),
    cors=True,
    tags=["ingest"],
)
async def ingest_batch(request: Request) -> Response:
    return await _ingest(request, batch=True)
