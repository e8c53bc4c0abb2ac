"""Per-key rate limits that hold across worker processes and hosts: a local purse of tokens
leased from a shared bucket (store/rate_buckets.py).

A request spends a token from its worker's purse for the key: a dict lookup, no I/O. Only
when the purse is empty does the worker lease more (`lease_size` tokens, one database call);
requests for the same key arriving meanwhile wait for that one call instead of making their
own. A lease that grants nothing (the shared bucket is empty) is remembered until the bucket
holds a token again: those requests are refused (429) without asking the database.

Bound: tokens leased are taken out of the shared bucket, so over any interval of length t a
key is admitted at most `burst + rate * t + workers * lease_size` times (the last term: the
purses filled before the interval and spent during it), and never more than `burst + rate *
t` since its bucket was created.

While the database cannot be reached the worker falls back to its own per-process bucket
(`fallback`, the same rate and burst: N workers then allow up to N times the limit) for
`DEGRADED_S`, then tries a lease again; the caller decides what counts as unreachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from analytics.runtime.lru import LRU
from analytics.runtime.ratelimit import TokenBuckets

#: `lease(key, want)` -> (tokens granted, seconds until the shared bucket has one if none).
LeaseFn = Callable[[str, int], Awaitable[tuple[int, float]]]

#: Seconds a worker limits on its own after a lease failed for the database being unreachable.
DEGRADED_S = 1.0


def lease_size(rate_per_s: float, burst: float, lease_s: float) -> int:
    """Tokens per lease: the requests of `lease_s` seconds at the sustained rate, at most a
    quarter of the burst (so a few workers can share it), at least 1."""
    return max(1, min(math.floor(burst / 4), math.ceil(rate_per_s * lease_s)))


@dataclass
class _Purse:
    tokens: int = 0
    #: While the shared bucket is known empty: the clock time until which it stays so.
    empty_until: float = 0.0


class LeasedBuckets:
    def __init__(
        self,
        lease: LeaseFn,
        size: int,
        fallback: TokenBuckets,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease
        self.fallback = fallback
        self._degraded_until = 0.0
        self.size = size
        self._clock = clock
        self._purses: LRU[str, _Purse] = LRU(max_keys)
        self._pending: dict[str, anyio.Event] = {}
        #: Leases made (database calls), for tests and figures.
        self.leases = 0

    def unspent(self, key: str) -> int:
        """Tokens of `key` leased by this worker and not spent yet."""
        purse = self._purses.get(key)
        return purse.tokens if purse else 0

    def degraded(self) -> bool:
        """Whether this worker limits on its own for now (`degrade` was called recently)."""
        return self._degraded_until > self._clock()

    def degrade(self) -> None:
        """Limit with the per-process fallback for `DEGRADED_S` (the database is unreachable)."""
        self._degraded_until = self._clock() + DEGRADED_S

    def take_locally(self, key: str) -> float:
        """`take` with the per-process fallback bucket (no database)."""
        return self.fallback.take(key, self._clock())

    async def take(self, key: str) -> float:
        """Spend one token of `key`: 0.0 if allowed, else the seconds to wait before retrying.
        Errors of the lease call (the database unreachable) propagate."""
        while True:
            purse = self._purses.get(key)
            if purse is None:
                purse = _Purse()
                self._purses.put(key, purse)
            if purse.tokens > 0:
                purse.tokens -= 1
                return 0.0
            now = self._clock()
            if purse.empty_until > now:
                return purse.empty_until - now
            pending = self._pending.get(key)
            if pending is not None:
                await pending.wait()
                continue  # the lease that was in flight filled the purse (or found none)
            done = self._pending[key] = anyio.Event()
            try:
                self.leases += 1
                granted, wait_s = await self._lease(key, self.size)
            finally:
                del self._pending[key]
                done.set()
            purse.tokens += granted
            if not granted:
                purse.empty_until = self._clock() + wait_s
