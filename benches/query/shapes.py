"""The dashboard queries issue 11 measures, and the ranges each one is asked over.

A query is *cold* when its range ends now: the current bucket is open, and
api/query.py `_cached_or_rendered` never caches a range that includes it, so every
repetition is computed (and each names a new `to`). It is *warm* when its range ends at the
start of the current bucket: closed, so the first answer is cached and the repetitions after
it are served from the answer cache (the bench sends that first one untimed).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from benches.query.dataset import DAY_MS, NAMES

STEP_MS = {"minute": 60_000, "hour": 3_600_000, "day": DAY_MS}
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    days: float
    interval: str
    group_by: str | None = None
    filters: tuple[tuple[str, str], ...] = ()
    agg: str = "count"
    event: str = NAMES[0]

    def range_ms(self, now_ms: int, warm: bool) -> tuple[int, int]:
        """(from, to) in epoch ms: ending now (cold) or at the current bucket's start (warm)."""
        to = now_ms - now_ms % STEP_MS[self.interval] if warm else now_ms
        return to - int(self.days * DAY_MS), to

    def path(self, start_ms: int, end_ms: int) -> str:
        params: list[tuple[str, str]] = [
            ("event", self.event),
            ("from", str(start_ms)),
            ("to", str(end_ms)),
            ("interval", self.interval),
            ("agg", self.agg),
        ]
        if self.group_by:
            params += [("group_by", self.group_by), ("limit", "100")]
        params += [("filter", f"{dim}:{value}") for dim, value in self.filters]
        return "/v1/metrics?" + urlencode(params)


SHAPES = (
    Shape("30d_day", "30 d, `interval=day`, one event", 30, "day"),
    Shape("30d_day_by_path", "30 d, `interval=day`, `group_by=path`", 30, "day", "path"),
    Shape("7d_hour_by_country", "7 d, `interval=hour`, `group_by=country`", 7, "hour", "country"),
    Shape(
        "30d_day_us_by_path",
        "30 d, `interval=day`, `filter=country:US&group_by=path`",
        30,
        "day",
        "path",
        (("country", "US"),),
    ),
    Shape(
        "30d_day_two_filters",
        "30 d, `interval=day`, `filter=country:US&filter=utm.source:google`",
        30,
        "day",
        None,
        (("country", "US"), ("utm.source", "google")),
    ),
    Shape(
        "30d_day_unique", "30 d, `interval=day`, `agg=unique_users`", 30, "day", agg="unique_users"
    ),
    Shape("24h_minute", "24 h, `interval=minute`, one event", 1, "minute"),
    Shape(
        "30d_hour_by_country", "30 d, `interval=hour`, `group_by=country`", 30, "hour", "country"
    ),
    Shape("92d_day", "92 d, `interval=day`, one event", 92, "day"),
)
