"""Every error code the HTTP layer answers itself, with its status and when: the registry
beside the normalizer's (`analytics.normalize.ERROR_CODES`, codes of bodies, events and
signatures).

`ALL_CODES` is both: `ApiError.of(code, ...)` takes the status from it, the OpenAPI document
(`api/openapi.py`) lists every entry, and `tests/test_openapi.py` fails for a code spelled in
the package's source that is not here. Codes are API (clients match on them): never rename one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from analytics.normalize import ERROR_CODES

#: code -> (HTTP status, when it is answered).
API_CODES: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        # Protocol guards (api/protocol.py, api/middleware.py), before any route.
        "ambiguous_length": (400, "a request with both Content-Length and Transfer-Encoding"),
        "request_timeout": (408, "the request head was not sent in time"),
        "headers_too_large": (431, "request headers over 16 KiB"),
        "deadline_exceeded": (504, "the request took longer than its deadline"),
        # Routing (api/errors.py).
        "not_found": (404, "no such route; the message lists the routes and a near match"),
        "method_not_allowed": (405, "the route exists for other methods (see Allow)"),
        "http_error": (400, "another HTTP-level refusal"),
        "internal_error": (500, "a bug; logged with its traceback"),
        # Keys (api/auth.py).
        "missing_key": (401, "no `Authorization: Bearer <key>` header"),
        "invalid_key": (401, "an unknown or revoked key"),
        "wrong_scope": (403, "the key lacks the scope (write to send, read to query)"),
        "publishable_key_cannot_read": (403, "a publishable (browser) key only sends events"),
        "origin_not_allowed": (403, "the Origin is not listed by the publishable key"),
        "rate_limited": (429, "the key's token bucket is empty (see Retry-After)"),
        # CORS preflights (api/cors.py).
        "cors_origin_not_allowed": (403, "a preflight from an origin no publishable key lists"),
        "cors_method_not_allowed": (403, "a preflight asking for a method other than POST"),
        "cors_header_not_allowed": (403, "a preflight asking for a header the API does not take"),
        # Segment and PostHog compatible endpoints (api/compat_*.py).
        "signed_key_unsupported": (
            403,
            "a key that requires signatures, sent by an SDK that cannot sign",
        ),
        # Ingest (api/ingest.py).
        "unsupported_charset": (415, "a charset other than UTF-8"),
        "unsupported_media_type": (415, "a Content-Type the route does not take"),
        "invalid_content_length": (400, "a Content-Length that is not a number"),
        "missing_signature": (401, "the key requires an X-Signature header"),
        "unstorable_event": (422, "PostgreSQL refuses the rows themselves; resending fails too"),
        "overloaded": (503, "the writer inbox is full (see Retry-After)"),
        "write_failed": (503, "the events were not stored; retry (see Retry-After)"),
        "database_unavailable": (503, "the database is unreachable (see Retry-After)"),
        # Queries (api/query.py).
        "unknown_parameter": (400, "a query parameter the route does not take"),
        "repeated_parameter": (400, "a query parameter other than `filter` given twice"),
        "missing_event": (400, "no `event` parameter"),
        "invalid_interval": (400, "`interval` is not minute, hour or day"),
        "invalid_agg": (400, "`agg` is not count, sum or unique_users"),
        "invalid_time": (400, "`from`/`to` is not RFC 3339 with an offset or epoch ms"),
        "invalid_range": (400, "`from` is not before `to`"),
        "range_too_large": (400, "the range spans more than ANALYTICS_MAX_RANGE_DAYS"),
        "too_many_buckets": (400, "more buckets than ANALYTICS_MAX_BUCKETS"),
        "unknown_dimension": (400, "a dimension not in ANALYTICS_DIMENSIONS"),
        "invalid_filter": (400, "`filter` is not DIM:VALUE"),
        "invalid_limit": (400, "`limit` is not 1-100"),
        # Readiness (api/ops.py).
        "loop_stalled": (503, "the event loop is stalled"),
        "writer_saturated": (503, "the writer inbox is nearly full"),
        "database_unreachable": (503, "the database does not answer"),
    }
)

#: Every code the API answers with its status: the normalizer's and the HTTP layer's. A code
#: both spell (`invalid_event`: a bad event, or a bad `event` parameter) has one status.
ALL_CODES: Mapping[str, int] = MappingProxyType(
    {**dict(ERROR_CODES), **{code: status for code, (status, _) in API_CODES.items()}}
)
