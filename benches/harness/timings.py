"""Where the time went inside the server: its own per-section timings, from its access log.

This service logs one JSON line per request (`"msg": "access"`, `total_ms`, `timings_ms` by
section, `scenario` from the `X-Scenario` header), so a step's requests are found by their
scenario; the case-study variants log none. Percentiles here are nearest-rank, over the raw
samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def server_timings(log: bytes, scenario: str) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of the server's own request time and of each timed section, from the
    JSON access-log lines of `scenario`'s requests. Lines that are cut or not JSON are
    skipped. Empty when there are none."""
    samples: dict[str, list[float]] = {}
    for raw in log.splitlines():
        if b'"access"' not in raw:
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if rec.get("msg") != "access" or rec.get("scenario") != scenario:
            continue
        if isinstance(rec.get("total_ms"), int | float):
            samples.setdefault("total", []).append(float(rec["total_ms"]))
        for name, ms in (rec.get("timings_ms") or {}).items():
            if isinstance(ms, int | float):
                samples.setdefault(name, []).append(float(ms))
    return {
        name: {
            "p50": round(percentile(v, 0.5) or 0.0, 3),
            "p99": round(percentile(v, 0.99) or 0.0, 3),
        }
        for name, v in samples.items()
    }
