"""The results in words: the Markdown report, the progress line, and the files of a run.

`render_markdown` writes the table of every step, the stall table (modes whose watchdog named
blocking lines), where the server's time and CPU went, the headline figures per mode judged
against the targets (`results.is_sustained`), and the service's ratios to the references
measured in the same run. A figure a reference cannot have (loop lag, stalls, freshness: it
runs no watchdog and answers no query) is "—"; one that was not measured is "n/a".
`write_results` rewrites `results.json` and `results.md` after every step, so an interrupted
run keeps what it measured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benches.harness.plan import BURST_FACTOR, BURST_S, REFERENCES
from benches.harness.results import (
    SUSTAINED_ACHIEVED,
    TARGET_SINGLE_P99_MS,
    Step,
    is_sustained,
)

#: A figure that does not exist for the mode (a reference's loop lag, stalls, freshness).
NONE = "—"


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


def _ms(v: float | None) -> str:
    """A small CPU cost in ms, with three significant figures or so."""
    if v is None:
        return "n/a"
    return f"{v:.3f}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:,.1f}"


def _costs(step: Step) -> str:
    """CPU ms per acknowledged event: server / PostgreSQL."""
    per = step.cpu_ms_per_event
    if not per:
        return "n/a"
    return "/".join(_ms(per.get(k)) for k in ("server", "postgres"))


def _commits(step: Step) -> str:
    """PostgreSQL's CPU ms per commit, with commits/s and rows per commit beside it."""
    if step.commits is None:
        return NONE if step.mode == "bare" else "n/a"
    if not step.commits:
        return "no commit"
    rows = f", {_f(step.rows_per_commit)} rows" if step.rows_per_commit is not None else ""
    return f"{_ms(step.pg_ms_per_commit)} ({_f(step.commits_per_s, 0)}/s{rows})"


def _watched(step: Step, text: str) -> str:
    """`text`, or "—" for a reference (no watchdog, no query: nothing to measure)."""
    return NONE if step.mode in REFERENCES else text


def _stalls(n: int | None) -> str:
    if n is None:
        return "stalls n/a"
    return f"{n} stall" + ("" if n == 1 else "s")


def describe(meta: Mapping[str, Any]) -> str:
    """One line on how a run was set up (workers, stub, steps, signing, pinning, load)."""
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


def progress(step: Step) -> str:
    """The line printed after each step (and the top blocking line, if any)."""
    fresh = _watched(step, f"{_f(step.fresh_p99_ms, 0)} ms ({step.probes_ok}/{step.probes})")
    stalls = "n/a" if step.stalls is None else step.stalls
    line = (
        f"[{step.mode:8s}] {step.scenario:13s} {_offered(step):>19s}:"
        f" achieved {_f(step.achieved_rps, 0)}/s, {_f(step.events_per_s, 0)} events/s,"
        f" p50/p99/max {_f(step.p50_ms)}/{_f(step.p99_ms)}/{_f(step.max_ms)} ms,"
        f" errors {step.error_summary()}, lag p99 {_watched(step, _f(step.lag_p99_ms))} ms,"
        f" stalls {_watched(step, str(stalls))}, fresh p99 {fresh}"
    )
    if step.scenario in ("burst", "mixed"):
        line += f", p99 {_p99(step)}"
    if step.cpu:
        line += ", cpu " + " ".join(f"{k} {v:.0%}" for k, v in step.cpu.items())
    if step.cpu_ms_per_event:
        line += f", cpu ms/event server/pg {_costs(step)}"
    if step.commits:
        line += f", pg ms/commit {_commits(step)}"
    if step.blocking:
        top = step.blocking[0]
        line += f"\n{'':11s}top blocking line: {top['line']} ({top['count']} stalls)"
    return line + ("  SATURATED" if step.saturated else "")


def best_sustained(steps: Sequence[Step], mode: str) -> Step | None:
    """`mode`'s highest ingest_single step held at the target (`is_sustained`)."""
    held = [
        s for s in steps if s.mode == mode and s.scenario == "ingest_single" and is_sustained(s)
    ]
    return max(held, key=lambda s: s.offered_rps, default=None)


def best_batch(steps: Sequence[Step], mode: str) -> Step | None:
    """`mode`'s ingest_batch step with the most events/s acknowledged, without errors."""
    batch = [s for s in steps if s.mode == mode and s.scenario == "ingest_batch" and s.errors == 0]
    return max(batch, key=lambda s: s.events_per_s, default=None)


def headlines(steps: Sequence[Step]) -> list[str]:
    """Per mode: the highest ingest_single rate sustained (p99 ≤ 50 ms, ≥ 98 % of the
    offered rate achieved, no error), the most events/s acknowledged by ingest_batch, the
    worst freshness p99."""
    out = []
    for mode in dict.fromkeys(s.mode for s in steps):
        mine = [s for s in steps if s.mode == mode]
        parts = []
        if any(s.scenario == "ingest_single" for s in mine):
            best = best_sustained(steps, mode)
            if best is not None:
                lag = f", loop lag p99 {_f(best.lag_p99_ms)} ms" if best.lag_p99_ms else ""
                stalls = "" if mode in REFERENCES else f", {_stalls(best.stalls)}"
                parts.append(
                    f"ingest_single held {best.offered_rps:,.0f} req/s at p99"
                    f" {_f(best.p99_ms)} ms{lag}{stalls}"
                )
            else:
                parts.append(f"ingest_single: no step at p99 ≤ {TARGET_SINGLE_P99_MS:.0f} ms")
        batch = best_batch(steps, mode)
        if batch is not None:
            parts.append(
                f"ingest_batch up to {batch.events_per_s:,.0f} events/s"
                f" {'answered' if mode == 'bare' else 'acked'} without errors"
            )
        fresh = [s.fresh_p99_ms for s in mine if s.fresh_p99_ms is not None and not s.saturated]
        if fresh:
            parts.append(f"freshness p99 ≤ {max(fresh):,.0f} ms (unsaturated steps)")
        if parts:
            out.append(f"- **{mode}**: " + "; ".join(parts))
    return out


#: k6 busier than this share of its core at a reference's saturation: k6 may be the limit.
CLIENT_BOUND = 0.9


def _caveats(steps: Sequence[Step], scenario: str, service: str, reference: str) -> str:
    """What makes a ratio a bound: a ladder that never saturated did not find its ceiling,
    and a reference that saturated with k6's core full may have found k6's."""
    notes = []
    for mode, bound in ((reference, "an upper"), (service, "a lower")):
        ladder = [s for s in steps if s.mode == mode and s.scenario == scenario]
        saturated = next((s for s in ladder if s.saturated), None)
        if saturated is None:
            notes.append(f"{mode} never saturated, so this is {bound} bound")
        elif mode == reference and saturated.cpu.get("k6", 0.0) >= CLIENT_BOUND:
            notes.append(
                f"k6 used {saturated.cpu['k6']:.0%} of its core where {mode} saturated"
                f" (server {saturated.cpu.get('server', 0.0):.0%}): the load generator may be"
                f" {mode}'s limit, so this may be {bound} bound"
            )
    return f" ({'; '.join(notes)})" if notes else ""


def ratios(steps: Sequence[Step]) -> list[str]:
    """The service against the references of the same run: its sustained ingest_single rate
    (achieved req/s of its best sustained step) as a share of bare's, and its most ingest_batch
    events/s acknowledged without errors as a share of copy's."""
    out = []
    ran = {(s.mode, s.scenario) for s in steps}
    if {("service", "ingest_single"), ("bare", "ingest_single")} <= ran:
        rule = (
            f"p99 ≤ {TARGET_SINGLE_P99_MS:.0f} ms, ≥ {SUSTAINED_ACHIEVED:.0%} achieved, no errors"
        )
        service, bare = best_sustained(steps, "service"), best_sustained(steps, "bare")
        if service is None or bare is None:
            none = " and ".join(m for m, b in (("service", service), ("bare", bare)) if b is None)
            out.append(
                f"- **service / bare**, ingest_single: no sustained step for {none} ({rule})"
            )
        else:
            share = service.achieved_rps / bare.achieved_rps
            out.append(
                f"- **service / bare**, ingest_single sustained ({rule}):"
                f" {service.achieved_rps:,.0f} / {bare.achieved_rps:,.0f} req/s = **{share:.0%}**"
                + _caveats(steps, "ingest_single", "service", "bare")
            )
    service_b, copy_b = best_batch(steps, "service"), best_batch(steps, "copy")
    if service_b is not None and copy_b is not None and copy_b.events_per_s > 0:
        share = service_b.events_per_s / copy_b.events_per_s
        out.append(
            "- **service / copy**, ingest_batch events/s acknowledged without errors:"
            f" {service_b.events_per_s:,.0f} / {copy_b.events_per_s:,.0f} = **{share:.0%}**"
            + _caveats(steps, "ingest_batch", "service", "copy")
        )
    return out


def _steps_table(steps: Sequence[Step]) -> list[str]:
    lines = [
        "| mode | scenario | offered req/s | achieved req/s | events/s acked | p50 ms | p95 ms"
        " | p99 ms | max ms | errors | loop lag p99 ms | stalls | freshness p99 ms"
        " | CPU server/pg/k6 | CPU ms/event server/pg | pg ms/commit (commits/s, rows) |",
        "|" + "---|" * 16,
    ]
    for s in steps:
        sat = " ⚠" if s.saturated else ""
        fresh = _f(s.fresh_p99_ms, 0)
        if s.probes and s.probes_ok < s.probes:
            fresh += f" ({s.probes_ok}/{s.probes})"
        events = _f(s.events_per_s, 0) + (" †" if s.mode == "bare" else "")
        stalls = "n/a" if s.stalls is None else str(s.stalls)
        lines.append(
            f"| {s.mode} | {s.scenario} | {_offered(s)} | {_f(s.achieved_rps, 0)}{sat}"
            f" | {events} | {_f(s.p50_ms)} | {_f(s.p95_ms)} | {_p99(s)}"
            f" | {_f(s.max_ms)} | {s.error_summary()} | {_watched(s, _f(s.lag_p99_ms))}"
            f" | {_watched(s, stalls)} | {_watched(s, fresh)} | {_cpu(s.cpu)}"
            f" | {_costs(s)} | {_commits(s)} |"
        )
    return [
        *lines,
        "",
        "⚠ saturated: under 90 % of the offered requests completed, or over 1 % errors;"
        " the ladder stops there. Latencies include errors and timeouts. Freshness: from the"
        " ack of a probe event to the first `/v1/metrics` answer counting it (n/a: no probe"
        " counted; (k/n): probes that got an ack and were seen). CPU: share of one core used"
        " during the step by the server's processes, PostgreSQL's and k6's; per event: CPU"
        " ms per acknowledged event; per commit: all of PostgreSQL's CPU (background work"
        " included) over the commits the server reports (group commits; one COPY per request"
        " for copy). —: a reference has no such figure (no watchdog, no query)."
        + (
            " †: bare stores nothing; its events/s are the events of the bodies it answered."
            if any(s.mode == "bare" for s in steps)
            else ""
        ),
    ]


def _stall_table(steps: Sequence[Step]) -> list[str]:
    named = [s for s in steps if s.blocking]
    if not named:
        return []
    lines = [
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
    return lines


def _timing_table(steps: Sequence[Step]) -> list[str]:
    timed = [s for s in steps if s.server_ms]
    if not timed:
        return []
    lines = [
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
    return lines


def _profile_table(steps: Sequence[Step]) -> list[str]:
    profiled = [s for s in steps if s.profile]
    if not profiled:
        return []
    lines = [
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
    return lines


def render_markdown(steps: Sequence[Step], meta: Mapping[str, Any]) -> str:
    """The results as Markdown: the steps, the stalls, the server's time and CPU (the tables
    that have rows), then the headline figures per mode."""
    commit = f" at commit {meta['git']}" if meta.get("git") else ""
    lines = [f"Run {meta.get('started', '?')}{commit}: {describe(meta)}", ""]
    lines += _steps_table(steps)
    lines += _stall_table(steps)
    lines += _timing_table(steps)
    lines += _profile_table(steps)
    headline = headlines(steps) + ratios(steps)
    if headline:
        lines += ["", *headline]
    skipped = meta.get("skipped") or ()
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, steps: Sequence[Step], meta: Mapping[str, Any]) -> None:
    """(Re)write `results.json` (meta and every step) and `results.md` under `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "steps": [asdict(s) for s in steps]}
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (run_dir / "results.md").write_text(render_markdown(steps, meta))
