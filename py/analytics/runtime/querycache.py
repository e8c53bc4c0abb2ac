"""Rendered query results, each tagged with the range of event time it covers.

Loop-agnostic bookkeeping. The cache itself never decides whether it may be trusted: the
invalidation listener (`pipeline/invalidation.py`) applies every commit's invalidation and
runs the barrier that makes a read safe. `put` refuses a result computed across an
invalidation of the same event, so a slow query can never store a stale answer.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime

from analytics.runtime.lru import LRU


@dataclass(frozen=True)
class Entry:
    customer_id: int
    name: str
    start_us: int
    end_us: int
    body: bytes

    @classmethod
    def of(cls, customer_id: int, name: str, start: datetime, end: datetime, body: bytes) -> Entry:
        return cls(
            customer_id, name, int(start.timestamp() * 1e6), int(end.timestamp() * 1e6), body
        )


class QueryCache:
    def __init__(self, size: int = 2048) -> None:
        self._entries: LRU[Hashable, Entry] = LRU(size)
        self._generation: dict[tuple[int, str], int] = {}
        self._epoch = 0

    def generation(self, customer_id: int, name: str) -> tuple[int, int]:
        """A token to hand back to `put`: it changes with every invalidation of the event."""
        return self._epoch, self._generation.get((customer_id, name), 0)

    def get(self, key: Hashable) -> bytes | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.body

    def put(self, key: Hashable, entry: Entry, generation: tuple[int, int]) -> None:
        """Store unless an invalidation for the same event arrived since `generation`."""
        if self.generation(entry.customer_id, entry.name) == generation:
            self._entries.put(key, entry)

    def invalidate(self, customer_id: int, name: str, start_us: int, end_us: int) -> None:
        ident = (customer_id, name)
        self._generation[ident] = self._generation.get(ident, 0) + 1
        for k, e in self._entries.items():
            if (e.customer_id, e.name) == ident and e.start_us <= end_us and start_us < e.end_us:
                self._entries.pop(k)

    def clear(self) -> None:
        """Forget everything (invalidations may have been missed); racing `put`s are dropped."""
        self._entries.clear()
        self._epoch += 1
