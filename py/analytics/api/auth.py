"""API keys on requests: `Authorization: Bearer <key>`, scopes, and per-key rate limits.

Lookups go through a per-process cache (`runtime.ttlcache`, 10 s, hits and misses), so a
revoked key stops working within that time on every worker without a database round trip
per request. A key not in the cache while the database is unreachable gets a 503
`database_unavailable` (api/dberrors.py); cached keys keep working through the outage.

Rate limits are per key across every worker and host: tokens are leased in batches from a
bucket row in PostgreSQL (runtime/leases.py), so a request costs a database call only when its
worker's lease for the key is spent. While the database is unreachable a worker limits on
its own (per-process bucket) rather than refusing every request.

A publishable key (a browser's) only sends, and only from the origins it lists when the
request carries an `Origin`. The key is left in the ASGI scope (`KEY_SCOPE`) for the CORS
middleware, which decides from it whether the response may be read by that origin.
"""

from __future__ import annotations

import logging
import math

from starlette.requests import Request

from analytics.api.dberrors import database_errors, unavailable
from analytics.api.errors import ApiError
from analytics.runtime.leases import LeasedBuckets
from analytics.runtime.ttlcache import TtlCache
from analytics.store.keys import KeyInfo

#: Key lookups, cached per process for a few seconds (hits and misses alike).
KeyCache = TtlCache[str, KeyInfo | None]

#: Where `authenticate` leaves the request's key in the ASGI scope.
KEY_SCOPE = "analytics.key"

log = logging.getLogger(__name__)


async def authenticate(request: Request, keys: KeyCache, scope: str) -> KeyInfo:
    """The request's key, if valid and holding `scope`; 401/403 otherwise, 503 if it must be
    looked up while the database is unreachable."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing_key", "send Authorization: Bearer <key>")
    return await check_key(request, keys, key, scope)


async def check_key(request: Request, keys: KeyCache, key: str, scope: str) -> KeyInfo:
    """`key`'s info if it is valid and holds `scope`; 401/403 otherwise (503 as above)."""
    if len(key) > 256:
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
    with database_errors("key lookup"):
        info = await keys.get(key)
    if info is None:
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
    request.scope[KEY_SCOPE] = info
    if info.publishable:
        _publishable(request, info, scope)
    if scope not in info.scopes:
        raise ApiError(403, "wrong_scope", f"this key lacks the {scope!r} scope")
    return info


def _publishable(request: Request, info: KeyInfo, scope: str) -> None:
    if scope != "write":
        raise ApiError.of(
            "publishable_key_cannot_read",
            "a publishable key only sends events (a web page's keys are public);"
            " query with a read key, from a server",
        )
    origin = request.headers.get("origin")
    if origin is not None and origin not in info.origins:
        raise ApiError.of(
            "origin_not_allowed",
            f"this publishable key is not for pages at {origin[:200]!r}; it lists"
            f" {', '.join(sorted(info.origins))} (`analytics keys create --publishable --origin`)",
        )


async def rate_limit(buckets: LeasedBuckets, key: KeyInfo) -> None:
    """429 with Retry-After when the key's token bucket is empty."""
    name = f"{key.customer_id}:{key.key_id}"
    if buckets.degraded():
        wait = buckets.take_locally(name)
    else:
        try:
            wait = await buckets.take(name)
        except Exception as e:
            if not unavailable(e):
                raise
            log.warning("rate limiting per process: %s: %s", type(e).__name__, e)
            buckets.degrade()
            wait = buckets.take_locally(name)
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests for this key",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
