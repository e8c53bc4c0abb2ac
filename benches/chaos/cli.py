"""The command: `just chaos ARGS`, i.e. `python -m benches.chaos ARGS` from the checkout.

Runs the chosen experiments one after the other, each on its own fresh stack, prints the
table and writes it (Markdown and JSON) under `benches/results/chaos-<timestamp>/`. The
exit status is 0 only when every experiment held every invariant (see `outcome`): a lost
or doubled event, a fault the server did not come back from, or billing off by one is
exit status 1. Ctrl-C stops the experiment under way (its stack is torn down), writes what
was measured so far and exits 130.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from benches.chaos import report
from benches.chaos.experiments import EXPERIMENTS, Plan, run_experiment, supervisor_landed
from benches.chaos.outcome import Outcome
from benches.harness.stack import ROOT


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(EXPERIMENTS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benches.chaos",
        description="Fault experiments against real processes; asserts no acknowledged "
        "event is lost or counted twice.",
        epilog="experiments: " + ", ".join(EXPERIMENTS),
    )
    p.add_argument("--quick", action="store_true", help="a few seconds each (about 90 s in all)")
    p.add_argument("--only", type=_names, help="comma-separated experiments (default: all)")
    p.add_argument(
        "--duration",
        type=float,
        help="seconds of load per experiment (default 30, quick 4; worker_kill and soak run"
        " twice as long, pg_restart 1.5 times)",
    )
    p.add_argument("--producers", type=int, default=4, help="producer threads (default 4)")
    p.add_argument("--batch", type=int, default=25, help="events per batch (default 25)")
    p.add_argument("--rate", type=float, default=10.0, help="batches/s per producer (default 10)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benches" / "results", help="results directory"
    )
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    duration = args.duration or (4.0 if args.quick else 30.0)
    return Plan(
        duration_s=duration,
        quick=args.quick,
        producers=args.producers,
        batch=args.batch,
        rate=args.rate,
        drain_s=10.0 if args.quick else 20.0,
        billing_wait_s=15.0 if args.quick else 30.0,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = plan_from(args)
    names = args.only or list(EXPERIMENTS)
    run_dir = report.run_dir(args.out)
    outcomes: list[Outcome] = []
    status = 0
    started = time.monotonic()
    try:
        for name in names:
            print(f"chaos: {name} ...", flush=True)
            outcome = run_experiment(EXPERIMENTS[name], plan, logs=run_dir / "logs")
            outcomes.append(outcome)
            verdict = "ok" if outcome.ok else "FAILED: " + outcome.failures[0].splitlines()[0]
            print(f"chaos: {name} {verdict} ({outcome.elapsed_s:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        status = 130
    title = f"chaos {'--quick ' if args.quick else ''}({time.monotonic() - started:.0f} s)"
    markdown = report.render(outcomes, title)
    meta = {
        "plan": vars(plan),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "supervisor_landed": supervisor_landed(),
    }
    report.write(outcomes, markdown, run_dir, meta)
    print(markdown)
    print(f"results in {run_dir}")
    failed = [o for o in outcomes if not o.ok]
    if failed and not status:
        status = 1
        if any(EXPERIMENTS[o.experiment].needs_supervisor for o in failed):
            if not supervisor_landed():
                print(
                    "note: worker_kill needs `analytics serve` to restart dead workers;"
                    " that supervisor (analytics.workers) has not landed yet"
                )
    return status
