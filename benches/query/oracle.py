"""The answers the service should give, computed from the generated events themselves.

The dataset is a pure function of its seed and anchor (dataset.py), so the bench can walk
it again and compute each query's series independently of the database: counts per bucket
and group, or distinct users. `check` compares a `/v1/metrics` answer with that, point by
point, so a fast wrong answer fails the run. It walks every event once for all the answers
to check (~10 s per million events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from benches.query.dataset import Dataset
from benches.query.shapes import STEP_MS, Shape


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Expected:
    """One answer to check: its shape, its (from, to) as the service answered, and the
    values the oracle accumulates per (group, bucket index)."""

    shape: Shape
    answer: dict
    start_ms: int = 0
    end_ms: int = 0
    buckets: int = 0
    values: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start_ms, self.end_ms = _ms(self.answer["from"]), _ms(self.answer["to"])
        self.buckets = (self.end_ms - self.start_ms) // STEP_MS[self.shape.interval]

    def add(self, e) -> None:
        s = self.shape
        if e.name != s.event or not self.start_ms <= e.ts_ms < self.end_ms:
            return
        if any(e.dim(d) != v for d, v in s.filters):
            return
        group = e.dim(s.group_by) if s.group_by else None
        bucket = (e.ts_ms - self.start_ms) // STEP_MS[s.interval]
        cell = self.values.setdefault(group, {})
        if s.agg == "unique_users":
            cell.setdefault(bucket, set()).add(e.user_id)
        else:
            cell[bucket] = cell.get(bucket, 0) + (e.value if s.agg == "sum" else 1)

    def series(self) -> dict[str | None, list[float]]:
        out = {}
        for group, cells in self.values.items():
            points = [0] * self.buckets
            for b, v in cells.items():
                points[b] = len(v) if isinstance(v, set) else v
            out[group] = points
        if self.shape.group_by is None:
            out.setdefault(None, [0] * self.buckets)
        return out

    def mismatch(self) -> str | None:
        """None when the answer equals the oracle's series (an estimate: within 4 standard
        errors of it), else what differs."""
        got = {s["group"]: [p["value"] for p in s["points"]] for s in self.answer["series"]}
        want = self.series()
        if set(got) != set(want):
            return f"groups differ: got {sorted(map(str, got))}, want {sorted(map(str, want))}"
        # An estimate (unique users from sketches) must lie within 4 of its relative standard
        # errors of the exact count; everything else must be exact.
        error = self.answer.get("relative_standard_error") if self.answer.get("approximate") else 0

        def differs(g: float, w: float) -> bool:
            return abs(g - w) > 4 * error * w if error else g != w

        for group, points in want.items():
            if len(got[group]) != len(points) or any(
                differs(g, w) for g, w in zip(got[group], points, strict=True)
            ):
                diffs = [
                    (i, g, w)
                    for i, (g, w) in enumerate(zip(got[group], points, strict=False))
                    if differs(g, w)
                ]
                return (
                    f"group {group!r}: {len(diffs)} buckets differ, e.g. (i, got, want) {diffs[:3]}"
                )
        return None


def check(dataset: Dataset, answers: list[tuple[Shape, dict]]) -> dict[str, str | None]:
    """shape key -> None (the answer is exact) or what differs, over one walk of the data."""
    expected = [Expected(shape, answer) for shape, answer in answers]
    for e in dataset:
        for x in expected:
            x.add(e)
    return {x.shape.key: x.mismatch() for x in expected}
