"""Blocking work, named: run a sync callable in a worker thread under a named limiter.

A sync function that can block (a vendor SDK, a large Rust call that released the GIL) is
called only through `Offload.run`, so the limiter it consumes is visible by name, its
capacity is bounded, and its borrowed/waiting counts can be exported.

Limiters are created inside the running event loop (they bind to it), one `Offload` per app.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class LimiterStats:
    name: str
    capacity: int
    borrowed: int
    waiting: int


class Offload:
    """The app's named `CapacityLimiter`s and the one way to use them."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self._limiters = {name: anyio.CapacityLimiter(size) for name, size in sizes.items()}

    def limiter(self, name: str) -> anyio.CapacityLimiter:
        try:
            return self._limiters[name]
        except KeyError:
            raise KeyError(f"no limiter named {name!r}; known: {sorted(self._limiters)}") from None

    async def run(self, limiter: str, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run `fn(*args)` in a worker thread holding a token of `limiter`.

        Cancellation waits for the thread to finish (a thread cannot be interrupted), so the
        caller never outlives work it started.
        """
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter(limiter))

    def stats(self) -> list[LimiterStats]:
        out = []
        for name, lim in sorted(self._limiters.items()):
            s = lim.statistics()
            out.append(
                LimiterStats(name, int(lim.total_tokens), s.borrowed_tokens, s.tasks_waiting)
            )
        return out
