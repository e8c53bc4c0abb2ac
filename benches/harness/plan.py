"""What a run offers: the modes, the scenarios each one runs, and each scenario's ladder.

The modes are this service (`service`), the case study's baselines (`naive`, `threaded`,
benches/casestudy) and the references (`bare`, `copy`, benches/reference_apps): the ceilings
the service is measured against in the same run (DESIGN "Performance model"). A reference
runs only the scenarios it is the ceiling of (`REFERENCES`); the plan says which it skips.

The ladders are the harness's defaults per kind of run (`--quick`, `--compare`,
`--reference`); `--rates` replaces them per scenario. The burst shape is shared with the k6
script, which gets it through its environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SCENARIOS = ("ingest_single", "ingest_batch", "mixed", "burst")
BASELINES = ("naive", "threaded")
#: Each reference, and the scenarios it is the ceiling of: `bare` (a Starlette route on the
#: same Hypercorn that reads the body and answers a constant) of any request; `copy` (the
#: same normalizer, then one binary COPY into `events` per request) of batches only: one
#: COPY per single event is not what the service would ever do.
REFERENCES: Mapping[str, tuple[str, ...]] = {
    "bare": SCENARIOS,
    "copy": ("ingest_batch",),
}
MODES = (*BASELINES, "service", *REFERENCES)

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
    # Fine enough near the service's knee for a ratio, high enough to saturate the bare
    # stack (a constant answer costs Hypercorn itself a fraction of a millisecond).
    "reference": {
        "ingest_single": (500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000),
        "ingest_batch": (20, 40, 60, 80, 100, 120, 160, 200),
        "mixed": (500, 1000, 2000, 3000, 4000, 6000),
        "burst": (200, 400, 600, 800, 1200),
    },
    "reference_quick": {
        "ingest_single": (1000, 2000, 4000),
        "ingest_batch": (40, 80, 160),
        "mixed": (1000, 2000, 4000),
        "burst": (400, 800),
    },
}
#: The burst scenario offers BURST_FACTOR x its rate for BURST_S seconds mid-step.
BURST_FACTOR = 5
BURST_S = 10


@dataclass(frozen=True)
class Plan:
    """A run: its modes in order, the scenarios asked for, each scenario's ladder, the
    scenarios each mode runs (a mode with none still starts nothing), and a note for every
    (mode, scenario) left out."""

    modes: list[str]
    scenarios: list[str]
    rates: dict[str, list[int]]
    runs: dict[str, list[str]]
    skipped: list[str]


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


def applies(mode: str, scenario: str) -> bool:
    """Whether `mode` runs `scenario`: every mode does, except a reference outside the
    scenarios it is the ceiling of."""
    return scenario in REFERENCES.get(mode, SCENARIOS)


def plan(opts: argparse.Namespace) -> Plan:
    """The run its flags ask for: the service alone; with `--compare` the case study's
    baselines too, with `--reference` the references (both: the two ingest scenarios by
    default), or the `--modes` named; the ladder of the kind of run, or `--rates`."""
    modes = list(opts.modes or ())
    if not modes:
        modes = [*BASELINES] if opts.compare else []
        modes += ["bare", "service", "copy"] if opts.reference else ["service"]
    compare = any(m in BASELINES for m in modes)
    reference = any(m in REFERENCES for m in modes)
    scenarios = opts.scenarios or (
        ["ingest_single", "ingest_batch"] if compare or reference else list(SCENARIOS)
    )
    kind = "compare" if compare else "reference" if reference else ""
    if opts.quick:
        kind = f"{kind}_quick" if kind else "quick"
    ladder = LADDERS[kind or "full"]
    rates = {s: list(ladder[s]) for s in scenarios}
    rates |= parse_rates(opts.rates, scenarios)
    runs = {m: [s for s in scenarios if applies(m, s)] for m in modes}
    skipped = [
        f"{m}: not run for {s} (a reference of {', '.join(REFERENCES[m])} only)"
        for m in modes
        for s in scenarios
        if not applies(m, s)
    ]
    return Plan(modes, scenarios, {s: rates[s] for s in scenarios}, runs, skipped)
