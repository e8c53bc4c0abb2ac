"""The load harness's reference modes (benches/reference_apps, `--modes bare|copy`,
`--reference`): which modes run which scenarios, how their rows, CPU costs and the service's
ratios to them are reported, and each reference app served as the harness serves it (real
Hypercorn, real HTTP; a real PostgreSQL for `copy`). No k6.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import anyio
import asyncpg
import httpx2 as httpx
import pytest

from analytics.normalize import COPY_COLUMNS, normalize_batch
from benches.harness import cli, plan, plot, promtext, report, results
from benches.reference_apps import plain_copy
from harness_steps import step
from serverproc import serving

ROOT = Path(__file__).resolve().parents[1]
META = {"started": "2025-01-01 00:00:00Z", "workers": 1, "stub_latency_ms": 20, "sign": True}


def parsed(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


# --- the plan -----------------------------------------------------------------------------------


def test_reference_runs_bare_service_and_copy_for_batches_only() -> None:
    got = plan.plan(parsed("--reference"))
    assert got.modes == ["bare", "service", "copy"]
    assert got.scenarios == ["ingest_single", "ingest_batch"]
    assert got.runs == {
        "bare": ["ingest_single", "ingest_batch"],
        "service": ["ingest_single", "ingest_batch"],
        "copy": ["ingest_batch"],
    }
    assert got.skipped == ["copy: not run for ingest_single (a reference of ingest_batch only)"]
    # High enough to saturate a constant answer on one core, fine near the service's knee.
    assert got.rates["ingest_single"] == list(plan.LADDERS["reference"]["ingest_single"])
    assert max(got.rates["ingest_single"]) >= 6000
    assert plan.plan(parsed("--modes", "bare,service,copy")) == got


def test_named_modes_run_in_their_order_on_the_scenarios_they_apply_to() -> None:
    got = plan.plan(parsed("--modes", "bare,service", "--scenarios", "ingest_single"))
    assert got.modes == ["bare", "service"]
    assert got.runs == {"bare": ["ingest_single"], "service": ["ingest_single"]}
    assert got.skipped == []
    got = plan.plan(parsed("--modes", "service,copy", "--scenarios", "ingest_batch"))
    assert got.runs == {"service": ["ingest_batch"], "copy": ["ingest_batch"]}
    got = plan.plan(parsed("--modes", "copy", "--scenarios", "ingest_single,mixed,burst"))
    assert got.runs == {"copy": []}
    assert [n.split(" (")[0] for n in got.skipped] == [
        "copy: not run for ingest_single",
        "copy: not run for mixed",
        "copy: not run for burst",
    ]
    assert plan.plan(parsed("--modes", "bare", "--quick")).rates["ingest_single"] == list(
        plan.LADDERS["reference_quick"]["ingest_single"]
    )


def test_compare_keeps_its_meaning_and_combines_with_reference() -> None:
    assert plan.plan(parsed("--compare")).modes == ["naive", "threaded", "service"]
    both = plan.plan(parsed("--compare", "--reference"))
    assert both.modes == ["naive", "threaded", "bare", "service", "copy"]
    assert both.rates["ingest_single"][0] <= 25  # the naive variant still sets the ladder
    with pytest.raises(SystemExit):
        parsed("--modes", "bare,nope")


# --- figures of a step --------------------------------------------------------------------------


def reference(mode: str, **kw: object) -> results.Step:
    """A reference's step: no watchdog figures, no probes."""
    base: dict = {"lag_p99_ms": None, "stalls": None, "fresh_p99_ms": None, "probes_ok": 0}
    return step(mode=mode, probes=0, **{**base, **kw})


def test_sustained_needs_the_target_p99_the_rate_and_no_error() -> None:
    assert results.is_sustained(step())
    assert not results.is_sustained(step(p99_ms=50.5))
    assert not results.is_sustained(step(achieved_rps=975.0))  # under 98 % of the offered rate
    assert not results.is_sustained(step(statuses={"200": 9_999, "503": 1}))
    assert not results.is_sustained(step(dropped=1))
    assert not results.is_sustained(step(p99_ms=None, requests=0, statuses={}))


def test_cpu_costs_per_event_and_per_commit() -> None:
    per_event, per_commit = results.cpu_costs({"server": 6.0, "postgres": 3.0}, 10_000, 500)
    assert per_event == {"server": 0.6, "postgres": 0.3}
    assert per_commit == 6.0
    assert results.cpu_costs({"server": 1.0}, 0, None) == ({}, None)
    assert results.cpu_costs({"server": 1.0}, 10, 0) == ({"server": 100.0}, None)


def rows_histogram(count: float, total: float) -> str:
    return "\n".join(
        [
            "# HELP analytics_writer_batch_rows Rows per group commit",
            "# TYPE analytics_writer_batch_rows histogram",
            f'analytics_writer_batch_rows_bucket{{le="+Inf"}} {count}',
            f"analytics_writer_batch_rows_count {count}",
            f"analytics_writer_batch_rows_sum {total}",
            "",
        ]
    )


def test_commit_figures_from_two_scrapes() -> None:
    before, after = rows_histogram(100, 2_000), rows_histogram(350, 12_000)
    assert promtext.commit_figures(before, after) == (250, 40.0)
    assert promtext.commit_figures(after, after) == (0, None)
    assert promtext.commit_figures("", rows_histogram(3, 30)) == (3, 10.0)
    assert promtext.commit_figures("", "") == (None, None)  # a server that exports none


# --- the report ---------------------------------------------------------------------------------


def reference_run() -> list[results.Step]:
    """bare sustains 4,000 req/s and saturates at 5,000; the service sustains 1,500 (2,000
    is over the p99 target); copy acks 60,000 events/s, the service 45,000."""
    return [
        reference("bare", offered_rps=4000, achieved_rps=3990.0, events_per_s=3990.0,
                  requests=40_000,
                  statuses={"200": 40_000}, p99_ms=6.0,
                  cpu={"server": 0.8, "postgres": 0.0, "k6": 0.5},
                  cpu_ms_per_event={"server": 0.2, "postgres": 0.0}),
        reference("bare", offered_rps=5000, achieved_rps=4200.0, requests=42_000,
                  statuses={"200": 42_000}, dropped=8_000, p99_ms=900.0),
        step(offered_rps=1500, achieved_rps=1497.0, requests=15_000, statuses={"200": 15_000},
             commits=1_200, rows_per_commit=12.5, commits_per_s=120.0,
             cpu_ms_per_event={"server": 0.55, "postgres": 0.31}, pg_ms_per_commit=3.9),
        step(offered_rps=2000, achieved_rps=1990.0, requests=20_000, statuses={"200": 20_000},
             p99_ms=80.0),
        step(offered_rps=3000, achieved_rps=2100.0, requests=21_000, statuses={"200": 21_000},
             dropped=9_000, p99_ms=2000.0),
        step(scenario="ingest_batch", offered_rps=90, events_per_request=500,
             events_per_s=45_000.0, requests=900, statuses={"200": 900}),
        step(scenario="ingest_batch", offered_rps=120, events_per_request=500,
             events_per_s=20_000.0, requests=800, statuses={"200": 600, "503": 200}),
        reference("copy", scenario="ingest_batch", offered_rps=120, events_per_request=500,
                  events_per_s=60_000.0, requests=1_200, statuses={"200": 1_200},
                  commits=1_200, rows_per_commit=500.0, commits_per_s=120.0,
                  cpu_ms_per_event={"server": 0.012, "postgres": 0.02},
                  pg_ms_per_commit=10.0),
        reference("copy", scenario="ingest_batch", offered_rps=160, events_per_request=500,
                  events_per_s=61_000.0, requests=1_000, statuses={"200": 1_000},
                  dropped=600),
    ]  # fmt: skip


def test_reference_rows_sit_beside_the_service_without_watchdog_figures() -> None:
    md = report.render_markdown(reference_run(), META)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| mode | scenario |"))
    rows = [line for line in lines if line.startswith(("| bare |", "| service |", "| copy |"))]
    assert len(rows) == 9 and all(r.count("|") == header.count("|") for r in rows)
    assert "CPU ms/event server/pg" in header and "pg ms/commit" in header
    bare = rows[0]
    # Loop lag, stalls, freshness: a reference has none ("—"); its events are the bodies'.
    assert "| 0 | — | — | — | 80%/0%/50% | 0.20/0.000 | — |" in bare
    assert "| 3,990 † |" in bare and "†: bare stores nothing" in md
    service = rows[2]
    assert "| 0.9 | 0 | 12 |" in service  # the service's own figures stay
    assert service.endswith("| 0.55/0.31 | 3.90 (120/s, 12.5 rows) |")
    copy = rows[7]
    assert "| copy | ingest_batch | 120 x500 |" in copy
    assert copy.endswith("| 0.012/0.020 | 10.0 (120/s, 500 rows) |")
    # A step without the commit histogram is "n/a" for the service, "—" for bare.
    assert rows[3].endswith("| n/a | n/a |") and rows[1].endswith("| n/a | — |")


def test_headlines_state_the_ratios_measured_in_the_run() -> None:
    steps = reference_run()
    md = report.render_markdown(steps, {**META, "skipped": ["copy: not run for ingest_single"]})
    assert "- **bare**: ingest_single held 4,000 req/s at p99 6.0 ms\n" in md
    assert "- **service**: ingest_single held 1,500 req/s at p99 9.0 ms, loop lag p99" in md
    assert "- **copy**: ingest_batch up to 60,000 events/s acked without errors" in md
    assert (
        "- **service / bare**, ingest_single sustained (p99 ≤ 50 ms, ≥ 98% achieved,"
        " no errors): 1,497 / 3,990 req/s = **38%**\n"
    ) in md
    assert (
        "- **service / copy**, ingest_batch events/s acknowledged without errors:"
        " 45,000 / 60,000 = **75%**\n"
    ) in md
    assert "Not run: copy: not run for ingest_single." in md
    # A ladder that never saturated found no ceiling: the ratio is only a bound.
    unsaturated = [s for s in steps if s.offered_rps not in (5000, 3000)]
    assert report.ratios(unsaturated)[0].endswith(
        "= **38%** (bare never saturated, so this is an upper bound;"
        " service never saturated, so this is a lower bound)"
    )


def test_a_reference_saturated_by_its_client_is_flagged() -> None:
    steps = reference_run()
    steps[1].cpu = {"server": 0.7, "postgres": 0.0, "k6": 0.97}  # bare at 5,000 req/s
    assert report.ratios(steps)[0].endswith(
        "= **38%** (k6 used 97% of its core where bare saturated (server 70%): the load"
        " generator may be bare's limit, so this may be an upper bound)"
    )


def test_no_ratio_without_both_sides() -> None:
    steps = [s for s in reference_run() if s.mode != "copy"]
    lines = report.ratios(steps)
    assert len(lines) == 1 and lines[0].startswith("- **service / bare**")
    over = [step(p99_ms=80.0), reference("bare")]
    assert report.ratios(over) == [
        "- **service / bare**, ingest_single: no sustained step for service"
        " (p99 ≤ 50 ms, ≥ 98% achieved, no errors)"
    ]
    assert report.ratios([step()]) == []


def test_progress_line_of_a_reference() -> None:
    line = report.progress(reference_run()[0])
    assert line.startswith("[bare    ] ingest_single")
    assert "lag p99 — ms, stalls —, fresh p99 —" in line
    assert "cpu ms/event server/pg 0.20/0.000" in line


def test_plot_draws_the_references(tmp_path: Path) -> None:
    out = plot.render_plot(reference_run(), tmp_path / "latency.png", "references")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plot.STYLES) == set(plan.REFERENCES) <= set(plot.COLORS)


# --- the copy reference's rows ------------------------------------------------------------------

BATCH = (
    b'{"events": [{"name": "Page View", "event_id": "e1", "ts": 1700000000000, "value": 2},'
    b' {"name": "Click", "user_id": "u2", "ts": 1700000000001, "properties": {"k": [1]}},'
    b' {"name": "", "event_id": "bad"}]}'
)
RECEIVED_US = 1_700_000_000_500_000


def _tuples(customer_id: str) -> bytes:
    return normalize_batch(BATCH, RECEIVED_US, customer_id=customer_id).copy_data


def test_customer_field_is_the_bigint_when_its_bytes_are_ascii() -> None:
    assert plain_copy.customer_field(7) == "\x00" * 7 + "\x07"
    assert plain_copy.customer_field(300) == "\x00" * 6 + "\x01\x2c"
    assert plain_copy.customer_field(200) is None  # 0xc8 is no ASCII character
    field = plain_copy.customer_field(7)
    assert field is not None
    head = struct.pack("!hiq", len(COPY_COLUMNS), 8, 7)
    assert _tuples(field).startswith(head) and _tuples(field).count(head) == 2


def test_bigint_rewrite_matches_the_ascii_shortcut() -> None:
    field = plain_copy.customer_field(1)
    assert field is not None
    as_one = _tuples(field)
    one = struct.pack("!hiq", len(COPY_COLUMNS), 8, 1)
    expected = as_one.replace(one, struct.pack("!hiq", len(COPY_COLUMNS), 8, 200))
    assert plain_copy.as_bigint_rows(_tuples("200"), 200) == expected
    with pytest.raises(ValueError, match="customer 200"):
        plain_copy.as_bigint_rows(_tuples("201"), 200)


# --- the apps, served as the harness serves them ------------------------------------------------


def reference_server(variant: str, *args: str, **env: str):
    """`python -m benches.reference_apps.serve --variant VARIANT` on a free port."""
    serve = [sys.executable, "-m", "benches.reference_apps.serve", "--variant", variant, *args]
    return serving(serve, "/readyz", cwd=str(ROOT), env=env)


def test_bare_reads_the_body_and_answers_a_constant() -> None:
    event = {"name": "Page View", "event_id": "e1", "properties": {"x": "y" * 1500}}
    with reference_server("bare") as base:
        got = httpx.post(f"{base}/v1/events", json=event, timeout=5)
        assert got.status_code == 200
        assert got.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
        assert httpx.post(f"{base}/v1/batch", content=BATCH, timeout=5).status_code == 200
        assert httpx.get(f"{base}/v1/metrics", timeout=5).json() == {"series": []}
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        # No watchdog, so nothing the harness could mistake for loop figures.
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 404
        assert httpx.get(f"{base}/debug/stalls", timeout=5).status_code == 404


async def _events(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT customer_id, name, event_id, user_id, value, properties, ts"
            " FROM events ORDER BY received_at, ts"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("customer_id", [7, 200], ids=["ascii-bigint", "rewritten"])
def test_copy_normalizes_and_stores_the_batch(fresh_dsn: str, customer_id: int) -> None:
    # Over the inline cut-over (16 KB): normalized on a worker thread.
    big = BATCH.replace(b'"k": [1]', b'"k": [' + b",".join([b'"' + b"z" * 5000 + b'"'] * 4) + b"]")
    args = ("--customer-id", str(customer_id))
    with reference_server("copy", *args, DATABASE_URL=fresh_dsn) as base:
        before = httpx.get(f"{base}/metrics", timeout=5).text
        got = httpx.post(f"{base}/v1/batch", content=BATCH, timeout=10)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["accepted"] == 2 and body["duplicates"] == 0
        assert [(r["index"], r["code"]) for r in body["rejected"]] == [(2, "invalid_name")]
        assert httpx.post(f"{base}/v1/batch", content=big, timeout=10).json()["accepted"] == 2
        refused = httpx.post(f"{base}/v1/batch", content=b"{not json", timeout=5)
        assert refused.status_code == 400 and refused.json()["code"]
        after = httpx.get(f"{base}/metrics", timeout=5).text
        # One COPY per request: two commits of two rows.
        assert promtext.commit_figures(before, after) == (2, 2.0)
    rows = anyio.run(_events, fresh_dsn)
    assert len(rows) == 4 and {r["customer_id"] for r in rows} == {customer_id}
    first = rows[0]
    assert (first["name"], first["event_id"], first["value"]) == ("page view", "e1", 2.0)
    assert rows[1]["user_id"] == "u2" and rows[1]["properties"] == '{"k": [1]}'
    assert time.time() > first["ts"].timestamp() > 1_699_999_999
