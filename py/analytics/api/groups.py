"""The series of a `/v1/metrics` answer from the rows the store returns: groups that add up.

Every event the query selects is in exactly one series: its dimension's value, `None` for
events without the grouped dimension, or — past `limit` — the `other` series, which holds
every group not listed. So the series always sum to the total (for counts and sums; unique
users do not add up across groups, so no `other` series is made for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from analytics.normalize import hll_build, hll_estimate, hll_merge
from analytics.store.series import MetricsQuery, Part, SeriesRow
from analytics.store.uniques import UniqueRows


@dataclass
class Group:
    group: str | None
    counts: list[int]
    sums: list[float]
    #: The number of groups folded into this one (the `other` series); 0 for a real group.
    other: int = 0

    @classmethod
    def empty(cls, group: str | None, n: int) -> Group:
        return cls(group, [0] * n, [0.0] * n)

    def values(self, agg: str) -> list[float] | list[int]:
        if agg == "count":
            return self.counts
        if agg == "unique_users":
            return [int(v) for v in self.sums]
        return self.sums

    @property
    def events(self) -> int:
        return sum(self.counts)


def combine(rows: list[SeriesRow], times: list[datetime], q: MetricsQuery) -> list[Group]:
    """The groups of the answer (unranked): rollup and raw rows added per group and bucket;
    the group None from the total less the groups' rollups. Only groups with events, except
    that an ungrouped answer always has its one series."""
    n = len(times)
    index = {t: i for i, t in enumerate(times)}
    groups: dict[str | None, Group] = {}
    totals = Group.empty(None, n)

    def group(name: str | None) -> Group:
        if name not in groups:
            groups[name] = Group.empty(name, n)
        return groups[name]

    for row in rows:
        i = index[row.bucket]
        if row.part is Part.TOTAL:
            totals.counts[i] += row.count
            totals.sums[i] += row.value
            continue
        target = group(row.group)
        target.counts[i] += row.count
        target.sums[i] += row.value
        if row.part is Part.ROLLUP and q.none_group:
            totals.counts[i] -= row.count
            totals.sums[i] -= row.value
    if any(totals.counts):
        missing = group(None)
        for i in range(n):
            if totals.counts[i]:  # a bucket with no such event keeps a sum of exactly 0
                missing.counts[i] += totals.counts[i]
                missing.sums[i] += totals.sums[i]
    if q.group_by is None:
        group(None)
    return [g for g in groups.values() if g.events or q.group_by is None]


def rank(groups: list[Group], limit: int, agg: str) -> list[Group]:
    """The `limit` largest groups (by their aggregate over the range, then by name; None
    last among equals), then `other` holding the rest (counts and sums only)."""
    ordered = sorted(groups, key=lambda g: (-sum(g.values(agg)), g.group is None, g.group or ""))
    if len(ordered) <= limit or agg == "unique_users":
        return ordered[:limit]
    kept, rest = ordered[:limit], ordered[limit:]
    other = Group.empty(None, len(kept[0].counts))
    other.other = len(rest)
    for g in rest:
        other.counts = [a + b for a, b in zip(other.counts, g.counts, strict=True)]
        other.sums = [a + b for a, b in zip(other.sums, g.sums, strict=True)]
    return [*kept, other]


def estimated(rows: UniqueRows, times: list[datetime], q: MetricsQuery) -> list[Group]:
    """The groups of a unique-users answer from sketches: per (bucket, group), the merge of
    its hourly sketches and of the unfolded events' users, estimated (CPU: Rust; run this
    in a worker thread)."""
    index = {t: i for i, t in enumerate(times)}
    parts: dict[tuple[str | None, int], list[bytes]] = {}
    for bucket, group, sketch in rows.sketches:
        parts.setdefault((group, index[bucket]), []).append(sketch)
    for bucket, group, users in rows.raw:
        parts.setdefault((group, index[bucket]), []).append(hll_build(users))
    groups: dict[str | None, Group] = {}
    for (group, i), sketches in parts.items():
        g = groups.setdefault(group, Group.empty(group, len(times)))
        g.sums[i] = float(round(hll_estimate(hll_merge(sketches))))
        g.counts[i] = 1  # present (sketches hold no event counts)
    if q.group_by is None:
        groups.setdefault(None, Group.empty(None, len(times)))
    return list(groups.values())
