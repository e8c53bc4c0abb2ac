"""The issue-11 dataset: a seeded, reproducible stream of events and their `POST /v1/batch`
bodies.

Batch `b` is a pure function of (seed, anchor, spread, b): its own `random.Random` is seeded
from them, so any batch can be generated (and regenerated, for the oracle) without the ones
before it, and two loads with the same seed and anchor send the same bytes. Shape (issue 11):
4 event names, 50 paths, 20 countries, 4 UTM sources, 20,000 users; and, for the other
default dimensions (settings.DEFAULT_DIMENSIONS, read as store/dimensions.py reads them), a
`referrer` URL (`referrer_host` is its host: 10 hosts) and a `user_agent` (`browser` is the
family the enrichment derives from it: 5 families). Paths, countries and sources are skewed
(weights 1/rank, like real traffic) so a filter like `country:US` selects a large share.
Timestamps are uniform over `spread_ms` before `anchor_ms` (30 days for a backfill, the last
minute for current events). Every event has an `event_id`, so a retried batch counts once.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

import orjson

DAY_MS = 86_400_000
NAMES = ("page view", "signup", "purchase", "click")
NAME_WEIGHTS = (70, 5, 5, 20)
PATHS = tuple(["/", "/pricing", "/docs", "/blog", "/signup"] + [f"/page/{i}" for i in range(45)])
COUNTRIES = (
    "US", "GB", "DE", "FR", "IN", "BR", "CA", "JP", "AU", "ES",
    "IT", "NL", "SE", "PL", "MX", "KR", "CH", "BE", "AT", "IE",
)  # fmt: skip
UTM_SOURCES = ("google", "newsletter", "twitter", "partner")
REFERRERS = tuple(
    f"https://{host}/some/path?q=1"
    for host in (
        "www.google.com", "news.ycombinator.com", "t.co", "www.reddit.com", "github.com",
        "duckduckgo.com", "www.bing.com", "lobste.rs", "example.org", "www.linkedin.com",
    )
)  # fmt: skip
#: One user agent per browser family of store/dimensions.py UA_FAMILIES.
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Edg/126.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 OPR/111.0",
)
USERS = 20_000


def _zipf(n: int) -> list[float]:
    return list(accumulate(1 / (rank + 1) for rank in range(n)))


_CUM = {
    "name": list(accumulate(NAME_WEIGHTS)),
    "path": _zipf(len(PATHS)),
    "country": _zipf(len(COUNTRIES)),
    "utm.source": _zipf(len(UTM_SOURCES)),
}


class Event(NamedTuple):
    """One generated event, as the oracle reads it (the dimensions flattened)."""

    ts_ms: int
    name: str
    user_id: str
    value: int
    path: str
    country: str
    utm_source: str
    referrer: str
    user_agent: str

    def dim(self, dimension: str) -> str:
        """The value the service derives for `dimension` (only those the shapes use)."""
        return {"path": self.path, "country": self.country, "utm.source": self.utm_source}[
            dimension
        ]

    def body(self, event_id: str) -> dict:
        return {
            "name": self.name,
            "event_id": event_id,
            "ts": self.ts_ms,
            "user_id": self.user_id,
            "value": self.value,
            "properties": {
                "path": self.path,
                "country": self.country,
                "utm": {"source": self.utm_source},
                "referrer": self.referrer,
                "user_agent": self.user_agent,
            },
        }


@dataclass(frozen=True)
class Dataset:
    """`events` events with timestamps in (anchor_ms - spread_ms, anchor_ms]."""

    events: int
    seed: int
    anchor_ms: int
    spread_ms: int
    batch_size: int = 500
    #: Prefix of every event_id (one per dataset loaded into a database).
    id_prefix: str = "b"
    #: Time-ordered: batch `b`'s timestamps lie in the `b`-th of `batches` equal slices of
    #: the spread (a history import), instead of anywhere in it (the same shape otherwise).
    ordered: bool = False

    @property
    def batches(self) -> int:
        return -(-self.events // self.batch_size)

    def batch(self, b: int) -> list[Event]:
        """The events of batch `b` (one `random.Random` per batch: seeding one per event
        cost more than the rest of the generation)."""
        r = random.Random(self.seed * 1_000_000_007 + b).random
        anchor, spread = self.anchor_ms, self.spread_ms
        if self.ordered:  # ts = anchor - spread * (1 - (b + u) / batches), u in [0, 1)
            anchor, spread = (
                anchor - spread * (self.batches - b - 1) // self.batches,
                (spread // self.batches),
            )

        def pick(values: tuple[str, ...], dim: str) -> str:
            cum = _CUM[dim]
            return values[bisect_right(cum, r() * cum[-1])]

        return [
            Event(
                ts_ms=anchor - int(r() * spread),
                name=pick(NAMES, "name"),
                user_id=f"u{int(r() * USERS)}",
                value=1 + int(r() * 100),
                path=pick(PATHS, "path"),
                country=pick(COUNTRIES, "country"),
                utm_source=pick(UTM_SOURCES, "utm.source"),
                referrer=REFERRERS[int(r() * len(REFERRERS))],
                user_agent=USER_AGENTS[int(r() * len(USER_AGENTS))],
            )
            for _ in self.batch_range(b)
        ]

    def batch_range(self, b: int) -> range:
        return range(b * self.batch_size, min((b + 1) * self.batch_size, self.events))

    def batch_body(self, b: int) -> tuple[bytes, int]:
        """(the JSON body of batch `b`, its event count)."""
        ids = self.batch_range(b)
        events = [e.body(f"{self.id_prefix}-{i}") for i, e in zip(ids, self.batch(b), strict=True)]
        return orjson.dumps({"events": events}), len(events)

    def __iter__(self) -> Iterator[Event]:
        return (e for b in range(self.batches) for e in self.batch(b))
