"""The command: `just load ARGS`, i.e. `python -m benches.harness ARGS` from the checkout.

Parses the flags, plans the run (`plan`), then for each mode starts a fresh stack, warms it
up unrecorded and climbs the ladder of each scenario the mode runs (`measure.run_step`),
stopping a ladder at its first saturated step unless `--full-ladder`. Results are rewritten
after every step and plotted at the end, also when the run is interrupted. The exit code is
0 when every step ran: saturation is a result, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benches.harness.cpu import cpu_plan
from benches.harness.k6 import k6_binary, run_k6
from benches.harness.measure import run_step, settle
from benches.harness.plan import BASELINES, MODES, REFERENCES, SCENARIOS, plan
from benches.harness.plot import render_plot
from benches.harness.report import describe, progress, render_markdown, write_results
from benches.harness.results import Step
from benches.harness.stack import ROOT, Stack

EXAMPLES = (
    "examples: just load --quick; just load --compare; just load --reference;"
    " just load --modes bare,service --scenarios ingest_single --rates 1000,2000,3000"
    " --duration 20"
)


WORKER_CLASSES = ("uvloop", "asyncio", "trio")


def _csv(choices: Sequence[str]) -> Any:
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short steps, 2 rates (under 2 min)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the case study's naive and threaded variants (benches/casestudy)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also run the references of the same run (benches/reference_apps): bare (a"
        " constant answer on the same Hypercorn) and, for ingest_batch, copy (normalize +"
        " one COPY per request); the same as --modes bare,service,copy",
    )
    p.add_argument(
        "--modes",
        type=_csv(MODES),
        help=f"modes to run, in order, from {', '.join(MODES)} (overrides --compare and"
        " --reference)",
    )
    p.add_argument(
        "--scenarios",
        type=_csv(SCENARIOS),
        help="comma-separated (default: all; with --compare, --reference or other modes than"
        " service: ingest_single,ingest_batch)",
    )
    p.add_argument(
        "--rates",
        action="append",
        metavar="[SCENARIO=]R1,R2",
        help="offered requests/s ladder, for every scenario or one (repeatable)",
    )
    p.add_argument("--duration", type=int, help="seconds per step (default 15; quick 5)")
    p.add_argument(
        "--stub-latency-ms", type=int, default=20, help="billing stub latency (default 20)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="Hypercorn workers of the service and references"
    )
    p.add_argument(
        "--worker-class",
        dest="worker_classes",
        default=["uvloop"],
        type=_csv(WORKER_CLASSES),
        help="Hypercorn worker class of the service and the references (the case-study"
        " variants run asyncio); a list (uvloop,asyncio,trio) runs the same ladders on each,"
        " one fresh stack per class, rows labelled mode@class",
    )
    p.add_argument(
        "--citus-workers",
        type=int,
        default=0,
        metavar="N",
        help="also run the service on a local Citus cluster of a coordinator and N workers"
        " (Citus built from CITUS_SRC once), after the single node: the same ladders, rows"
        " labelled service@citusN",
    )
    p.add_argument("--batch", type=int, default=500, help="events per ingest_batch request")
    p.add_argument("--probes", type=int, default=20, help="freshness probes per step")
    p.add_argument("--timeout", type=int, default=10, help="per-request timeout in seconds")
    p.add_argument("--max-vus", type=int, default=1000, help="cap on concurrent k6 requests")
    p.add_argument("--top-lines", type=int, default=3, help="blocking lines shown per step")
    p.add_argument("--no-sign", dest="sign", action="store_false", help="unsigned events")
    p.add_argument("--full-ladder", action="store_true", help="do not stop a ladder at saturation")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during each step (where its CPU goes)",
    )
    p.add_argument("--warmup", type=int, help="seconds of unrecorded load per mode (default 3)")
    p.add_argument("--out", type=Path, default=Path("benches/results"), help="results root")


def build_parser() -> argparse.ArgumentParser:
    import benches.harness

    p = argparse.ArgumentParser(
        prog="python -m benches.harness",
        description=(benches.harness.__doc__ or "").split("\n\n")[1].replace("\n", " "),
        epilog=EXAMPLES,
    )
    add_arguments(p)
    return p


def run(opts: argparse.Namespace) -> int:
    """Run the harness; the exit code is 0 when every step ran (saturation is a result)."""
    k6_binary()
    if opts.duration is None:
        opts.duration = 5 if opts.quick else 15
    if opts.warmup is None:
        opts.warmup = 2 if opts.quick else 3
    planned = plan(opts)
    modes, scenarios, rates = planned.modes, planned.scenarios, planned.rates
    classes = opts.worker_classes
    if len(classes) > 1 and set(modes) - {"service"}:
        raise SystemExit("a list of worker classes runs the service only: add --modes service")
    opts.worker_class = classes[0]
    server_cpus, opts.k6_cpus = cpu_plan(opts.workers)
    started = datetime.now(UTC)
    out_root = opts.out if opts.out.is_absolute() else ROOT / opts.out
    run_dir = out_root / started.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    opts.run_dir = run_dir
    meta: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "modes": modes,
        "scenarios": scenarios,
        "rates": rates,
        "skipped": planned.skipped,
        "duration_s": opts.duration,
        "quick": opts.quick,
        "workers": opts.workers,
        "worker_class": ",".join(classes),
        "stub_latency_ms": opts.stub_latency_ms,
        "citus_workers": opts.citus_workers,
        "batch": opts.batch,
        "sign": opts.sign,
        "server_cpus": server_cpus,
        "k6_cpus": opts.k6_cpus,
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "loadavg_before": _loadavg(),
        "git": _git_head(ROOT),
    }
    print(f"loadtest → {run_dir}", flush=True)
    print(
        f"modes {', '.join(modes)}; scenarios {', '.join(scenarios)}; {opts.duration} s steps;"
        f" server on core(s) {server_cpus or 'any'}, k6 on {opts.k6_cpus or 'any'};"
        f" load average {meta['loadavg_before']}",
        flush=True,
    )
    for note in planned.skipped:
        print(f"not run: {note}", flush=True)
    steps: list[Step] = []
    t0 = time.monotonic()
    try:
        citus_workers = opts.citus_workers
        for opts.worker_class, mode, citus in _runs(classes, modes, citus_workers):
            mine = planned.runs[mode]
            if not mine:
                continue
            # The case-study variants run one worker: one core. The references run the
            # service's workers on the service's cores.
            cpus = "0" if mode in BASELINES and server_cpus is not None else server_cpus
            stub = "" if mode in REFERENCES else " billing stub,"
            label = mode if len(classes) == 1 else f"{mode}@{opts.worker_class}"
            label += f"@citus{citus}" if citus else ""
            db = f"Citus ({citus} workers)" if citus else "PostgreSQL"
            print(f"[{label:8s}] starting {db},{stub} server ...", flush=True)
            with Stack(mode, opts, ROOT, cpus, label=label, citus_workers=citus) as stack:
                if opts.warmup:
                    # Unrecorded: connection pools, prepared statements, caches.
                    first = next((s for s in mine if s != "burst"), "ingest_single")
                    rate = rates[first][0] if first in rates else 50
                    run_k6(stack, first, rate, opts.warmup, opts, run_dir)
                for scenario in mine:
                    for rate in rates[scenario]:
                        step = run_step(stack, scenario, rate, opts, run_dir)
                        steps.append(step)
                        print(progress(step), flush=True)
                        write_results(run_dir, steps, meta)
                        if step.saturated and not opts.full_ladder:
                            skipped = [r for r in rates[scenario] if r > rate]
                            if skipped:
                                print(f"{'':11s}saturated: skipping {skipped}", flush=True)
                            settle(stack)
                            break
                        settle(stack)
    finally:
        meta["loadavg_after"] = _loadavg()
        meta["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_results(run_dir, steps, meta)
        if steps:
            render_plot(steps, run_dir / "latency.png", describe(meta))
    print()
    print(render_markdown(steps, meta))
    print(f"results: {run_dir}/results.md, results.json, latency.png ({meta['elapsed_s']} s)")
    return 0


def _runs(
    classes: Sequence[str], modes: Sequence[str], citus_workers: int
) -> list[tuple[str, str, int]]:
    """(worker class, mode, Citus workers or 0) of each stack, in order: every mode on the
    single node, and with `citus_workers` the service again on Citus right after it."""
    runs = []
    for c in classes:
        for m in modes:
            runs.append((c, m, 0))
            if m == "service" and citus_workers:
                runs.append((c, m, citus_workers))
    return runs


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "n/a"


def _git_head(root: Path) -> str | None:
    """The commit measured, with "+dirty" when tracked code differs from it."""

    def git(*args: str) -> str:
        got = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
        return got.stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = git("rev-parse", "--short", "HEAD")
        if head and git("status", "--porcelain", "--untracked-files=no", "--", "py", "rust"):
            head += "+dirty"
        return head or None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
