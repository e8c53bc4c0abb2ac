"""One step's figures (`Step`), the rules that call a step saturated or sustained, and what
the CPU of a step cost per acknowledged event and per commit.

A `Step` is plain data: what `measure` collected, what `report` and `plot` render, and what
`results.json` holds (`dataclasses.asdict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: A step counts as saturated below this share of the offered requests completed...
SATURATED_ACHIEVED = 0.9
#: ... or above this share of errors (non-200 answers, no answer, or not started by k6).
SATURATED_ERRORS = 0.01
#: What the issue asks of single events (one worker, 2 cores, billing stub at 20 ms): a rate
#: is sustained at p99 within this...
TARGET_SINGLE_P99_MS = 50.0
#: ... with at least this share of the offered rate achieved, and no error at all.
SUSTAINED_ACHIEVED = 0.98


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
    #: Commits during the step (group commits; one per request for `copy`) and their mean
    #: rows, from the server's `analytics_writer_batch_rows` histogram; None without it.
    commits: int | None = None
    rows_per_commit: float | None = None
    commits_per_s: float | None = None
    #: CPU milliseconds per acknowledged event, by process tree (server, postgres).
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)
    #: PostgreSQL's CPU milliseconds per commit (all of its processes: background work too).
    pg_ms_per_commit: float | None = None
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
    """Under 90 % of the offered requests completed, or over 1 % of them errors (a step that
    offered nothing counts as saturated: it measured nothing)."""
    offered = step.offered_requests
    if offered == 0:
        return True
    return step.requests < SATURATED_ACHIEVED * offered or step.errors > SATURATED_ERRORS * offered


def is_sustained(step: Step) -> bool:
    """Held at the target: no error, p99 ≤ 50 ms, and ≥ 98 % of the offered rate achieved
    (the rate, not only the count: a step whose tail ran past its end did not keep up)."""
    return (
        step.errors == 0
        and step.offered_requests > 0
        and step.p99_ms is not None
        and step.p99_ms <= TARGET_SINGLE_P99_MS
        and step.achieved_rps >= SUSTAINED_ACHIEVED * step.offered_rps
    )


def cpu_costs(
    cpu_s: Mapping[str, float], events: int, commits: int | None
) -> tuple[dict[str, float], float | None]:
    """(CPU ms per acknowledged event of the server and of PostgreSQL, PostgreSQL's CPU ms
    per commit) from the CPU seconds each used during a step; empty / None for no events or
    commits."""
    per_event = (
        {k: round(cpu_s[k] * 1000 / events, 4) for k in ("server", "postgres") if k in cpu_s}
        if events > 0
        else {}
    )
    per_commit = None
    if commits and "postgres" in cpu_s:
        per_commit = round(cpu_s["postgres"] * 1000 / commits, 3)
    return per_event, per_commit
