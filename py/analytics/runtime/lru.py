"""A bounded mapping that forgets the least recently used entry first.

Loop-agnostic bookkeeping (no I/O, no clock): the key cache, the query cache and the per-key
token buckets all keep at most `size` entries this way, so no client can grow them without
bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an LRU holds at least one entry")
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The entry (now the most recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store `value` as the most recently used entry, evicting the oldest beyond `size`."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def items(self) -> Iterator[tuple[K, V]]:
        """Every entry, oldest first (a snapshot: the LRU may change while iterating)."""
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)
