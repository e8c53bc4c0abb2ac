"""API keys on requests: `Authorization: Bearer <key>`, scopes, and a short-lived cache.

Lookups are cached in-process for `ttl_s` (hits and misses), so a revoked key stops working
within that time on every worker without a database round trip per request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from analytics.api.errors import ApiError
from analytics.runtime.ratelimit import TokenBuckets
from analytics.store.keys import KeyInfo

Lookup = Callable[[str], Awaitable[KeyInfo | None]]


class KeyCache:
    def __init__(self, lookup: Lookup, ttl_s: float = 10.0, size: int = 10_000) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._size = size
        self._entries: OrderedDict[str, tuple[float, KeyInfo | None]] = OrderedDict()

    async def get(self, key: str) -> KeyInfo | None:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        info = await self._lookup(key)
        self._entries[key] = (now + self._ttl_s, info)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return info


async def authenticate(request: Request, keys: KeyCache, scope: str) -> KeyInfo:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing_key", "send Authorization: Bearer <key>")
    if len(key) > 256:
        raise ApiError(401, "invalid_key", "unknown or revoked API key")
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
