"""The query bench's output: one Markdown table (and the same figures as JSON)."""

from __future__ import annotations

from benches.query.bench import ShapeRun


def _cell(summary: dict, what: str) -> str:
    return f"{summary[what]:,.1f}" if summary.get("n") else "-"


def _errors(summary: dict) -> str:
    errors = summary.get("errors") or {}
    return ", ".join(f"{code}x{n}" for code, n in errors.items()) or "0"


def markdown(meta: dict, runs: list[ShapeRun], checks: dict[str, str | None] | None) -> str:
    lines = [
        f"# Query bench ({meta['started']})",
        "",
        f"Dataset: {meta['dataset']['events']:,} events over the last "
        f"{meta['dataset']['spread_days']:g} days (seed {meta['dataset']['seed']}, anchor "
        f"{meta['dataset']['anchor']}); {meta.get('database', 'PostgreSQL, one node')};"
        f" commit {meta['commit']}; {meta['repeats']} requests "
        "per shape and mode, one at a time. Cold: a range ending now (its bucket is open, "
        "never cached); warm: a closed range whose answer was cached by one untimed request.",
        "",
    ]
    for load in meta.get("loads", []):
        lines.append(
            f"- load `{load['label']}`: {load['events']:,} events in {load['seconds']:,.1f} s = "
            f"**{load['events_per_s']:,.0f} events/s** ({load['connections']} connections, "
            f"batches of {meta['dataset']['batch_size']}; retries {load['retries'] or 0})"
            + (
                f"; all folded into the rollups after {load['folded_s']:,.1f} s = "
                f"{load['folded_events_per_s']:,.0f} events/s"
                if load.get("folded_s")
                else ""
            )
        )
    if meta.get("backfill_share") is not None:
        lines.append(
            f"- backfill rate / current rate: **{meta['backfill_share']:.0%}** acknowledged"
            + (
                f", **{meta['backfill_folded_share']:.0%}** folded into the rollups"
                if meta.get("backfill_folded_share") is not None
                else ""
            )
            + " (target ≥ 50 %)"
        )
    if meta.get("stored") is not None:
        lines.append(f"- events stored for the customer (database count): {meta['stored']:,}")
    if meta.get("settle_s") is not None:
        lines.append(f"- then `VACUUM (ANALYZE)` before the queries: {meta['settle_s']:,.1f} s")
    lines += [
        "",
        "| query (`GET /v1/metrics`) | points | cold p50 ms | cold p95 ms | cold max ms "
        "| cold errors | warm p50 ms | warm p95 ms | warm max ms | warm errors | answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cold, warm = r.cold.summary(), r.warm.summary()
        if checks is None:
            verdict = "not checked"
        elif r.shape.key not in checks:
            verdict = "no answer"
        else:
            verdict = "exact" if checks[r.shape.key] is None else "**WRONG**"
            if verdict == "exact" and r.approximate:
                verdict = "within 4 SE (estimate)"
        lines.append(
            f"| {r.shape.title} | {r.points:,} | {_cell(cold, 'p50_ms')} | "
            f"{_cell(cold, 'p95_ms')} | {_cell(cold, 'max_ms')} | {_errors(cold)} | "
            f"{_cell(warm, 'p50_ms')} | {_cell(warm, 'p95_ms')} | {_cell(warm, 'max_ms')} | "
            f"{_errors(warm)} | {verdict} |"
        )
    wrong = {k: v for k, v in (checks or {}).items() if v}
    if wrong:
        lines += ["", "Wrong answers:", ""] + [f"- `{k}`: {v}" for k, v in wrong.items()]
    lines += ["", f"Machine: {meta['machine']}", ""]
    return "\n".join(lines)


def as_json(meta: dict, runs: list[ShapeRun], checks: dict[str, str | None] | None) -> dict:
    return {
        **meta,
        "shapes": [
            {
                "key": r.shape.key,
                "title": r.shape.title,
                "points": r.points,
                "cold": r.cold.summary(),
                "warm": r.warm.summary(),
                "check": None
                if checks is None
                else ("missing" if r.shape.key not in checks else checks[r.shape.key] or "exact"),
            }
            for r in runs
        ],
    }
