"""What the producers were told, as plain bookkeeping: no I/O, no clock of its own.

The producers record every answer here (thread-safe): which event ids a 2xx acknowledged,
what each answer's `accepted` and `duplicates` said per batch, every error by status, and
when each 2xx arrived (on the caller's monotonic clock). The experiment's verdict is then
computed from the ledger and the stored counts by `recovery` and `over_acknowledged`, which
take plain numbers and are tested without a server.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Ledger:
    """Everything the producers offered and heard back."""

    offered_events: int = 0
    offered_batches: int = 0
    requests: int = 0
    acked: set[str] = field(default_factory=set)
    #: Batch key -> (events in it, sum of `accepted` over every 2xx answer for it).
    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicates: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: Arrival times of 2xx answers, ascending (answers are recorded as they arrive).
    ok_times: list[float] = field(default_factory=list)
    #: Batches given up on (still unacknowledged when the producers had to stop).
    abandoned: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def offer(self, batch_key: str, events: int) -> None:
        with self._lock:
            self.offered_batches += 1
            self.offered_events += events
            self.accepted.setdefault(batch_key, (events, 0))

    def ok(
        self,
        batch_key: str,
        ids: list[str],
        accepted: int,
        duplicates: int,
        at: float,
        rejected: int = 0,
    ) -> None:
        """A 2xx at `at` acknowledging `ids` (events it rejected, a bug here, are counted as
        errors `rejected` and not acknowledged)."""
        with self._lock:
            self.requests += 1
            if rejected:
                self.errors["rejected"] += rejected
            self.acked.update(ids)
            n, total = self.accepted[batch_key]
            self.accepted[batch_key] = (n, total + accepted)
            self.duplicates += duplicates
            bisect.insort(self.ok_times, at)

    def error(self, status: str) -> None:
        with self._lock:
            self.requests += 1
            self.errors[status] += 1

    def give_up(self) -> None:
        with self._lock:
            self.abandoned += 1

    def accepted_total(self) -> int:
        with self._lock:
            return sum(total for _, total in self.accepted.values())

    def over_acknowledged(self) -> int:
        """Events that answers called newly `accepted` more than once: per batch, the sum of
        `accepted` over all its answers beyond its size (each event is new exactly once)."""
        with self._lock:
            return sum(max(0, total - n) for n, total in self.accepted.values())

    def next_ok_after(self, t: float) -> float | None:
        """The arrival time of the first 2xx after `t`, or None."""
        with self._lock:
            i = bisect.bisect_right(self.ok_times, t)
            return self.ok_times[i] if i < len(self.ok_times) else None


def recovery(ledger: Ledger, fault_end: float) -> float | None:
    """Seconds from the end of a fault to the next 2xx, or None if none came."""
    nxt = ledger.next_ok_after(fault_end)
    return None if nxt is None else nxt - fault_end


def slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, in value per minute; None with
    fewer than 3 samples or no time spread."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mt) * (v - mv) for t, v in samples)
    return cov / var * 60
