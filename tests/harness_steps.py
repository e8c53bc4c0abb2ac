"""A load-harness step with plausible figures, for the harness's report and plan tests."""

from __future__ import annotations

from benches.harness import results


def step(**kw: object) -> results.Step:
    base: dict = {
        "mode": "service",
        "scenario": "ingest_single",
        "offered_rps": 1000,
        "duration_s": 10,
        "requests": 10_000,
        "achieved_rps": 1000.0,
        "events_per_s": 1000.0,
        "p50_ms": 2.0,
        "p95_ms": 5.0,
        "p99_ms": 9.0,
        "max_ms": 30.0,
        "statuses": {"200": 10_000},
        "lag_p99_ms": 0.9,
        "stalls": 0,
        "fresh_p99_ms": 12.0,
        "probes_ok": 20,
        "probes": 20,
    }
    base.update(kw)
    s = results.Step(**base)
    s.saturated = results.is_saturated(s)
    return s
