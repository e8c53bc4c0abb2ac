"""Results of an async loader, kept for a while: the per-process cache of API key lookups.

A hit costs a dict lookup on the loop; a miss awaits the loader once. Negative results (an
unknown key) are kept too, so a stream of requests with the same bad key costs the database
one lookup per `ttl_s`, not one per request. The clock is injectable so expiry is tested
without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from analytics.runtime.lru import LRU

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        ttl_s: float = 10.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: LRU[K, tuple[float, V]] = LRU(size)

    async def get(self, key: K) -> V:
        """The cached result for `key` if younger than `ttl_s`, else `load(key)` (cached)."""
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await self._load(key)
        self._entries.put(key, (now + self._ttl_s, value))
        return value
