"""What a run offers: the modes, the scenarios, and each scenario's ladder of rates.

The ladders are the harness's defaults per kind of run (`--quick`, `--compare`); `--rates`
replaces them per scenario. The burst shape is shared with the k6 script, which gets it
through its environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

SCENARIOS = ("ingest_single", "ingest_batch", "mixed", "burst")
MODES = ("naive", "threaded", "service")

#: Offered requests/s per scenario (burst: the base rate; the burst is 5x that).
LADDERS: dict[str, dict[str, tuple[int, ...]]] = {
    "full": {
        "ingest_single": (500, 1000, 2000, 3000, 4000),
        "ingest_batch": (20, 60, 120, 160, 200),
        "mixed": (500, 1000, 2000, 3000),
        "burst": (200, 400, 600),
    },
    "quick": {
        "ingest_single": (1000, 2000),
        "ingest_batch": (60, 120),
        "mixed": (1000, 2000),
        "burst": (400,),
    },
    # Low enough at the bottom for the naive variant (one request at a time, ~20 ms of
    # billing call each), high enough at the top to pass this service's targets.
    "compare": {
        "ingest_single": (25, 50, 100, 250, 500, 1000, 2000, 3000),
        "ingest_batch": (1, 2, 5, 10, 30, 60, 120),
        "mixed": (25, 50, 100, 250, 500, 1000, 2000),
        "burst": (10, 50, 200, 400),
    },
    "compare_quick": {
        "ingest_single": (25, 250, 2000),
        "ingest_batch": (2, 10, 60),
        "mixed": (25, 250, 2000),
        "burst": (10, 100, 400),
    },
}
#: The burst scenario offers BURST_FACTOR x its rate for BURST_S seconds mid-step.
BURST_FACTOR = 5
BURST_S = 10


def step_duration(scenario: str, duration_s: int) -> int:
    """A step's seconds: `duration_s`, long enough for a burst to have a before and after."""
    return max(duration_s, BURST_S + 6) if scenario == "burst" else duration_s


def parse_rates(specs: Sequence[str] | None, scenarios: Iterable[str]) -> dict[str, list[int]]:
    """`--rates 500,1000` (every scenario) and/or `--rates ingest_batch=20,60` (one)."""
    out: dict[str, list[int]] = {}
    for spec in specs or ():
        target, _, values = spec.rpartition("=")
        try:
            rates = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"--rates {spec!r}: rates are integers") from None
        if not rates or any(r <= 0 for r in rates):
            raise SystemExit(f"--rates {spec!r}: give positive rates")
        if target and target not in SCENARIOS:
            raise SystemExit(f"--rates {spec!r}: unknown scenario {target!r}")
        for s in [target] if target else scenarios:
            out[s] = sorted(rates)
    return out


def plan(opts: argparse.Namespace) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(modes, scenarios, rates by scenario) of a run from its flags: the service alone, or
    every mode with `--compare` (then the two ingest scenarios and the compare ladders)."""
    modes = opts.modes or (list(MODES) if opts.compare else ["service"])
    compare = opts.compare or any(m != "service" for m in modes)
    scenarios = opts.scenarios or (
        ["ingest_single", "ingest_batch"] if compare else list(SCENARIOS)
    )
    if compare:
        ladder = LADDERS["compare_quick" if opts.quick else "compare"]
    else:
        ladder = LADDERS["quick" if opts.quick else "full"]
    rates = {s: list(ladder[s]) for s in scenarios}
    rates |= parse_rates(opts.rates, scenarios)
    return modes, scenarios, {s: rates[s] for s in scenarios}
