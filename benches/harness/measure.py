"""One measured step: a scenario offered at one rate to a running stack, and what came of it.

Around the step: `/metrics` and `/debug/stalls` scrapes, the CPU of the server's and
PostgreSQL's process trees, and the offset of the server's log. During it: k6, the freshness
probes and (with `--profile`) py-spy. The step's `Step` combines k6's figures with the loop
and commit figures, the blocking lines, the server's own timings, the CPU shares and what
they cost per acknowledged event and per commit. A reference (benches/reference_apps) gets
no probes: it has no query to answer them, and no watchdog, so its loop figures stay empty
rather than faked. Blocking; the probe thread and py-spy end with the step, whatever happens
to k6.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benches.harness.cpu import tree_cpu
from benches.harness.httpclient import scrape, scrape_metrics, scrape_stalls
from benches.harness.k6 import parse_k6_summary, run_k6
from benches.harness.plan import BURST_FACTOR, REFERENCES, step_duration
from benches.harness.probes import Prober
from benches.harness.promtext import commit_figures, loop_figures
from benches.harness.pyspy import Profiler
from benches.harness.results import Step, cpu_costs, is_saturated
from benches.harness.stack import Stack
from benches.harness.stalls import blocking_delta, stall_culprits
from benches.harness.timings import percentile, server_timings


def _round(v: float | None, scale: float = 1.0) -> float | None:
    return None if v is None else round(v * scale, 1)


def run_step(stack: Stack, scenario: str, rate: int, opts: argparse.Namespace, out: Path) -> Step:
    """Offer `scenario` at `rate` requests/s to `stack` and return the step, saturated or not."""
    assert stack.keys is not None
    duration_s = step_duration(scenario, opts.duration)
    before = scrape_metrics(stack.port)
    stalls_before = scrape_stalls(stack.port)
    probes = 0 if stack.mode in REFERENCES else opts.probes
    prober = Prober(stack.port, stack.keys, scenario, probes, duration_s, opts.timeout)
    server_log = stack.tmp / "server.log"
    log_from = server_log.stat().st_size
    cpu_before, t0 = tree_cpu(stack.cpu_roots()), time.monotonic()
    prober.start()
    profiler = None
    try:
        if opts.profile:
            profiler = Profiler(stack, max(1, duration_s - 1), opts, out, f"{scenario}-{rate}")
        data = run_k6(stack, scenario, rate, duration_s, opts, out)
        cpu_after, elapsed = tree_cpu(stack.cpu_roots()), time.monotonic() - t0
    finally:
        prober.join(timeout=opts.timeout + 5)
        prober.stop.set()
        profile = profiler.result() if profiler is not None else {}
    used = {k: cpu_after[k] - v for k, v in cpu_before.items() if k in cpu_after}
    # Share of one core over the step (k6 from its rusage; it ran for about `elapsed`).
    cpu = {k: round(v / elapsed, 2) for k, v in used.items()}
    cpu["k6"] = round(data["k6_cpu_s"] / elapsed, 2)
    after = scrape_metrics(stack.port)
    stalls_after = scrape_stalls(stack.port)
    k6 = parse_k6_summary(data)
    with open(server_log, "rb") as f:
        f.seek(log_from)
        logged = f.read()
    timings = server_timings(logged, scenario)
    blocking = blocking_delta(stalls_before, stalls_after, opts.top_lines)
    if blocking is None:  # no /debug/stalls: what the watchdog logged
        blocking = stall_culprits(logged, opts.top_lines) or None
    run_s = k6.pop("run_s")
    acked = k6.pop("events_accepted")
    per_request = opts.batch if scenario == "ingest_batch" else 1
    if stack.mode == "bare":
        # Its `accepted` is a constant: count what it answered, every event of each body.
        acked = k6["statuses"].get("200", 0) * per_request
        k6["events_per_s"] = round(acked / run_s, 1) if run_s else 0.0
    lag, stalls = loop_figures(before, after)
    commits, rows_per_commit = commit_figures(before, after)
    cpu_ms_per_event, pg_ms_per_commit = cpu_costs(used, acked, commits)
    step = Step(
        mode=stack.label,
        scenario=scenario,
        offered_rps=rate,
        duration_s=duration_s,
        peak_rps=rate * (BURST_FACTOR if scenario == "burst" else 1),
        events_per_request=per_request,
        lag_p99_ms=None if lag is None else round(lag * 1000, 2),
        stalls=stalls,
        fresh_p99_ms=_round(percentile(prober.results, 0.99), 1000),
        probes_ok=len(prober.results),
        probes=prober.attempts,
        blocking=blocking,
        cpu=cpu,
        server_ms=timings,
        profile=profile,
        commits=commits,
        rows_per_commit=rows_per_commit,
        commits_per_s=None if commits is None else round(commits / elapsed, 1),
        cpu_ms_per_event=cpu_ms_per_event,
        pg_ms_per_commit=pg_ms_per_commit,
        **k6,
    )
    step.saturated = is_saturated(step)
    return step


def settle(stack: Stack, deadline_s: float = 20.0) -> None:
    """Before the next step: a second of quiet, then wait (bounded) until the server answers
    a health check within 100 ms, so a backlog left by a saturated step is not measured
    again."""
    time.sleep(1.0)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        t = time.monotonic()
        got = scrape(stack.port, "/healthz")
        if got is not None and got[0] == 200 and time.monotonic() - t < 0.1:
            return
        time.sleep(0.5)
