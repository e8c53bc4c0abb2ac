"""API keys on requests: `Authorization: Bearer <key>`, scopes, and per-key rate limits.

Lookups go through a per-process cache (`runtime.ttlcache`, 10 s, hits and misses), so a
revoked key stops working within that time on every worker without a database round trip
per request. A key not in the cache while the database is unreachable gets a 503
`database_unavailable` (api/dberrors.py); cached keys keep working through the outage.
"""

from __future__ import annotations

import math
import time

from starlette.requests import Request

from analytics.api.dberrors import database_errors
from analytics.api.errors import ApiError
from analytics.runtime.ratelimit import TokenBuckets
from analytics.runtime.ttlcache import TtlCache
from analytics.store.keys import KeyInfo

#: Key lookups, cached per process for a few seconds (hits and misses alike).
KeyCache = TtlCache[str, KeyInfo | None]


async def authenticate(request: Request, keys: KeyCache, scope: str) -> KeyInfo:
    """The request's key, if valid and holding `scope`; 401/403 otherwise, 503 if it must be
    looked up while the database is unreachable."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing_key", "send Authorization: Bearer <key>")
    return await check_key(keys, key, scope)


async def check_key(keys: KeyCache, key: str, scope: str) -> KeyInfo:
    """`key`'s info if it is valid and holds `scope`; 401/403 otherwise (503 as above)."""
    if len(key) > 256:
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
    with database_errors("key lookup"):
        info = await keys.get(key)
    if info is None:
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
    if scope not in info.scopes:
        raise ApiError(403, "wrong_scope", f"this key lacks the {scope!r} scope")
    return info


def rate_limit(buckets: TokenBuckets, key: KeyInfo) -> None:
    """429 with Retry-After when the key's token bucket is empty."""
    wait = buckets.take(f"{key.customer_id}:{key.key_id}", time.monotonic())
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests for this key",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
