"""The table (Markdown) of a run's outcomes and the files it goes to.

`render` takes plain outcomes and returns the Markdown: one row per experiment (load
offered, faults injected, acknowledged, stored, lost, doubled, billed, errors by status,
recovery time), then, per experiment, its notes and any broken invariant. `write` puts
`results.md` and `results.json` into the run's directory, `benches/results/chaos-<UTC
timestamp>/` (made by `run_dir`; the stacks keep the end of their logs under its `logs/`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benches.chaos.outcome import Outcome

HEADER = (
    "experiment",
    "load offered",
    "faults injected",
    "acknowledged",
    "stored",
    "lost",
    "doubled",
    "billed",
    "errors by status",
    "recovery",
)


def _faults(o: Outcome) -> str:
    if not o.faults:
        return o.title
    kinds = Counter(f["kind"] for f in o.faults)
    parts = []
    for kind, n in kinds.items():
        longest = max(f["duration_s"] for f in o.faults if f["kind"] == kind)
        parts.append(
            kind + (f" x{n}" if n > 1 else "") + (f" ({longest:.1f} s)" if longest >= 0.1 else "")
        )
    return ", ".join(parts)


def _recovery(o: Outcome) -> str:
    if not o.recovery_s:
        return "-"
    if any(r is None for r in o.recovery_s):
        return "never"
    worst = max(r for r in o.recovery_s if r is not None)
    return f"{'max ' if len(o.recovery_s) > 1 else ''}{worst:.2f} s"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{s}x{n:,}" for s, n in sorted(errors.items())) or "0"


def row(o: Outcome) -> list[str]:
    if o.skipped:
        return [o.experiment, "-", f"skipped: {o.skipped}", *["-"] * 7]
    mark = "" if o.ok else " FAIL"
    billed = "-" if o.billed is None else f"{o.billed:,}"
    return [
        o.experiment + mark,
        f"{o.offered_events:,} events in {o.offered_requests:,} batches"
        f" ({o.requests:,} requests), {o.duration_s:.0f} s",
        _faults(o),
        f"{o.acknowledged:,}",
        f"{o.stored:,}",
        f"{o.lost:,}",
        f"{o.doubled:,}",
        billed,
        _errors(o.errors),
        _recovery(o),
    ]


def render(outcomes: list[Outcome], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(o)) + " |" for o in outcomes]
    lines.append("")
    for o in outcomes:
        if o.skipped:
            continue
        details = [*o.notes]
        if o.abandoned:
            details.append(f"{o.abandoned} batches given up on (never acknowledged)")
        details.append(
            f"answers: {o.accepted:,} accepted, {o.duplicates:,} duplicates;"
            f" {o.elapsed_s:.0f} s with start and teardown"
        )
        for f in o.faults:
            if f["detail"]:
                details.append(f"{f['kind']} at {f['at_s']:.1f} s: {f['detail']}")
        lines.append(f"- **{o.experiment}**: " + "; ".join(details))
        for msg in o.failures:
            first, *rest = msg.splitlines()
            lines.append(f"  - FAILED: {first}")
            if rest:  # e.g. the end of the server's log, as a code block in the item
                lines += ["", *(f"        {line}" for line in rest), ""]
    return "\n".join(lines) + "\n"


def run_dir(out: Path) -> Path:
    """A new `out/chaos-<UTC timestamp>/`."""
    path = out / f"chaos-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write(outcomes: list[Outcome], markdown: str, directory: Path, meta: dict[str, Any]) -> None:
    """`results.md` and `results.json` into `directory`."""
    (directory / "results.md").write_text(markdown)
    data = {**meta, "outcomes": [asdict(o) | {"ok": o.ok} for o in outcomes]}
    (directory / "results.json").write_text(json.dumps(data, indent=2) + "\n")
