"""What the Segment and PostHog endpoints share: the `/v1/*` ingest path for bodies in
another product's format.

Their SDKs authenticate with the key as Basic-auth user (Segment) or in the body (PostHog
`api_key`/`token`, Segment `writeKey`); the key is one of ours with the write scope. The body
is read under the same caps, the Rust normalizer maps their field names to ours and applies
our rules (`normalize_compat`, rust/normalize/README.md "Compatible formats"), identity links
are committed, then the events through the group-commit writer: the answer comes after both.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from analytics.api.auth import check_key, rate_limit
from analytics.api.dberrors import database_errors
from analytics.api.errors import ApiError
from analytics.api.ingest import commit, encoding_of, read_body
from analytics.api.observe import timed
from analytics.api.state import services_of
from analytics.normalize import NormalizedBatch, NormalizeError, compat_key, normalize_compat
from analytics.store.identities import link_identities

#: Media types the SDKs send: JSON, or text/plain (browsers' way around a CORS preflight).
_MEDIA = ("", "application/json", "text/plain")


@dataclass(frozen=True)
class Outcome:
    result: NormalizedBatch
    inserted: int
    duplicates: int


def _check_media(request: Request) -> None:
    raw = request.headers.get("content-type", "")
    media, *params = (p.strip().lower() for p in raw.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name == "charset" and value.strip('"') not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_charset", "bodies must be UTF-8")
    if media not in _MEDIA and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Type must be application/json (form-encoded bodies are not supported)",
        )


def _encoding(request: Request) -> str:
    """Content-Encoding, or PostHog's `?compression=gzip-js` (posthog-js sends gzip that way)."""
    encoding = encoding_of(request)
    compression = request.query_params.get("compression", "").strip().lower()
    if compression in ("gzip-js", "gzip"):
        return "gzip"
    if compression not in ("", "none"):
        raise ApiError.of(
            "unsupported_encoding", f"compression={compression} is not supported; use gzip-js"
        )
    return encoding


async def ingest_compat(
    request: Request, dialect: str, header_key: str | None, *, batch: bool
) -> Outcome:
    """Authenticates, normalizes `dialect` bodies and commits them, as `/v1/*` does.

    `header_key` is the key from the request's headers; without one the body's is used
    (read and framed first, so a body without a key is a 401 only after its size checks).
    """
    svc = services_of(request)
    settings = svc.settings
    _check_media(request)
    encoding = _encoding(request)
    limits = svc.batch_limits if batch else svc.event_limits
    cap = settings.max_batch_body_bytes if batch else settings.max_event_body_bytes
    key = None
    if header_key is not None:
        with timed(request, "auth"):
            key = await check_key(request, svc.keys, header_key, "write")
    with timed(request, "read"):
        body = await read_body(request, cap)
    inline = len(body) <= settings.inline_normalize_bytes

    async def rust(fn):  # type: ignore[no-untyped-def]
        try:
            return fn() if inline else await svc.offload.run("cpu", fn)
        except NormalizeError as e:
            raise ApiError(e.status, e.code, str(e.args[1])) from None

    if key is None:
        find = functools.partial(
            compat_key, body, dialect=dialect, content_encoding=encoding, limits=limits
        )
        body_key = await rust(find)
        if not body_key:
            raise ApiError(401, "missing_key", _MISSING_KEY[dialect.partition("/")[0]])
        with timed(request, "auth"):
            key = await check_key(request, svc.keys, body_key, "write")
    await rate_limit(svc.buckets, key)
    if key.signing_keys and svc.flags.enabled("signature_enforcement"):
        raise ApiError(
            403,
            "signed_key_unsupported",
            "this key requires signed requests, which Segment and PostHog SDKs do not make;"
            " give them a key created without --signing",
        )

    normalize = functools.partial(
        normalize_compat,
        body,
        time.time_ns() // 1000,
        dialect=dialect,
        customer_id=str(key.customer_id),
        content_encoding=encoding,
        limits=limits,
    )
    with timed(request, "normalize"):
        result: NormalizedBatch = await rust(normalize)
    if result.identities:
        with database_errors("identity links"):
            await link_identities(
                svc.pool,
                key.customer_id,
                result.identities,
                datetime.now(UTC),
                acquire_timeout_s=settings.acquire_timeout_s,
                timeout_s=settings.command_timeout_s,
            )
    inserted, duplicates = await commit(request, result)
    return Outcome(result, inserted, duplicates)


_MISSING_KEY = {
    "segment": "send the write key as the HTTP Basic-auth user (Segment SDKs do), or as"
    " writeKey in the body",
    "posthog": "send the write key as api_key (or token) in the body",
}


def single_rejection(outcome: Outcome) -> None:
    """A one-message body whose message was refused: 400 with its code, not a 200."""
    result = outcome.result
    if result.total == 1 and result.rejected:
        _, code, message = result.rejected[0]
        raise ApiError(400, code, message)
