"""Per-key token buckets (loop-agnostic bookkeeping; the clock is passed in).

Limits are per worker process: with N workers a key may reach N times the rate.
"""

from __future__ import annotations

import math

from analytics.runtime.lru import LRU


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = burst
        #: key -> (tokens, time of the last take); the least recently used keys are forgotten
        #: first (a forgotten key starts again with a full bucket).
        self._buckets: LRU[str, tuple[float, float]] = LRU(max_keys)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 if allowed, else the seconds to wait before retrying."""
        tokens, last = self._buckets.get(key) or (self._burst, now)
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= cost:
            self._buckets.put(key, (tokens - cost, now))
            return 0.0
        self._buckets.put(key, (tokens, now))
        return (cost - tokens) / self._rate if self._rate > 0 else math.inf
