"""Fixed-bucket histograms of seconds and their quantiles, shaped like Prometheus' own.

Loop-agnostic bookkeeping (no I/O, no event loop): the watchdog's lag and stall histograms,
the Prometheus buckets of the same figures, and the load harness reading scraped buckets all
use these bounds and this one quantile estimate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping


def bucket_quantile(
    q: float, buckets: Mapping[float, float] | Iterable[tuple[float, float]]
) -> float | None:
    """The `q` quantile (0..1) of cumulative buckets (upper bound `le` -> count of values
    `<= le`, the last bound +Inf), as Prometheus' `histogram_quantile` estimates it: linear
    within the bucket holding the rank (the first bucket starting at 0), the highest finite
    bound when the rank falls in +Inf. None without observations."""
    pairs = sorted(buckets.items() if isinstance(buckets, Mapping) else buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank, lower, below = q * pairs[-1][1], 0.0, 0.0
    for bound, cumulative in pairs:
        if cumulative >= rank and cumulative > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


#: Default bucket upper bounds, in seconds (Prometheus `le` labels).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """A fixed-bucket histogram of seconds, shaped like a Prometheus histogram.

    `buckets` is `[(upper_bound, cumulative_count), ...]` ending with `(math.inf, count)`;
    a value `v` is counted in every bucket with `v <= upper_bound`. `count` and `sum` are the
    number and total of observed values. `observe` is O(log buckets), allocation-free, and
    meant for one writer thread; readers on other threads may see `count`, `sum` and the
    buckets one observation apart, never a torn value.
    """

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    @property
    def buckets(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """The `q` quantile (0..1) as `bucket_quantile` estimates it; NaN when empty."""
        value = bucket_quantile(q, self.buckets)
        return math.nan if value is None else value
