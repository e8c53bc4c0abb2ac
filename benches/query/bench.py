"""Timing the query shapes, one request at a time, cold then warm.

Each shape is asked `repeats` times cold (a range ending now: computed every time) and
`repeats` times warm (a closed range, after one untimed request that fills the answer
cache). The time is the client's, from sending the request to the last byte of the answer,
over one keep-alive connection (the harness's stdlib client); an answer other than 200 (the
504 of a query past the request deadline) is timed too and counted as an error. Blocking.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field

import orjson

from benches.harness.httpclient import Http
from benches.query.shapes import SHAPES, Shape


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Timings:
    """The requests of one shape in one mode."""

    ms: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    def add(self, ms: float, status: int) -> None:
        self.ms.append(ms)
        if status != 200:
            self.errors[status] = self.errors.get(status, 0) + 1

    def summary(self) -> dict:
        if not self.ms:
            return {"n": 0}
        return {
            "n": len(self.ms),
            "p50_ms": round(percentile(self.ms, 50), 1),
            "p95_ms": round(percentile(self.ms, 95), 1),
            "max_ms": round(max(self.ms), 1),
            "errors": {str(k): v for k, v in sorted(self.errors.items())},
        }


@dataclass
class ShapeRun:
    shape: Shape
    cold: Timings = field(default_factory=Timings)
    warm: Timings = field(default_factory=Timings)
    #: The first 200 answer of a cold request (what the oracle checks), if any.
    answer: dict | None = None
    points: int = 0

    @property
    def approximate(self) -> bool:
        """Whether the service said its answer is an estimate (unique users from sketches)."""
        return bool(self.answer and self.answer.get("approximate"))


def _timed(client: Http, path: str, headers: dict) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    try:
        status, body = client.request("GET", path, None, headers)
    except (OSError, http.client.HTTPException) as e:
        status, body = -1, str(e).encode()
    return (time.perf_counter() - t0) * 1000, status, body


def run(
    port: int, read_key: str, repeats: int, shapes: tuple[Shape, ...] = SHAPES
) -> list[ShapeRun]:
    """Every shape, cold then warm, `repeats` times each."""
    headers = {"Authorization": f"Bearer {read_key}", "X-Scenario": "querybench"}
    client = Http(port, timeout=30)
    runs = []
    try:
        for shape in shapes:
            r = ShapeRun(shape)
            for _ in range(repeats):
                ms, status, body = _timed(
                    client, shape.path(*shape.range_ms(_now_ms(), False)), headers
                )
                r.cold.add(ms, status)
                if status == 200 and r.answer is None:
                    r.answer = orjson.loads(body)
                    r.points = sum(len(s["points"]) for s in r.answer["series"])
            warm_path = shape.path(*shape.range_ms(_now_ms(), True))
            _timed(client, warm_path, headers)  # fills the answer cache
            for _ in range(repeats):
                ms, status, _ = _timed(client, warm_path, headers)
                r.warm.add(ms, status)
            runs.append(r)
            print(f"  {shape.key}: cold {r.cold.summary()} warm {r.warm.summary()}", flush=True)
    finally:
        client.close()
    return runs


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
