"""The load harness's pure parts (benches/harness): no server, no k6, no load.

Histogram quantiles from bucket deltas, the loop figures from two `/metrics` scrapes, the
k6 summary, the stall deltas, the probes' signed requests, the Markdown table and the plot
file, the plan of a run and its command line.
"""

from __future__ import annotations

import argparse
import hmac
import math
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.normalize import verify_signature
from analytics.runtime.histogram import bucket_quantile
from analytics.store.bootstrap import CustomerKeys
from analytics.store.keys import CreatedKey
from benches.harness import (
    cli,
    k6,
    plan,
    plot,
    probes,
    promtext,
    pyspy,
    report,
    stalls,
    timings,
)
from harness_steps import step

INF = math.inf
ROOT = Path(__file__).resolve().parents[1]


# --- histograms and /metrics ------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    # 100 observations: 50 ≤ 1 ms, 40 in (1, 5] ms, 10 in (5, 10] ms.
    buckets = {0.001: 50, 0.005: 90, 0.01: 100, INF: 100}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.001)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.003)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.0095)


def test_quantile_first_bucket_starts_at_zero() -> None:
    assert bucket_quantile(0.5, {0.002: 10, INF: 10}) == pytest.approx(0.001)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert bucket_quantile(0.99, {0.001: 10, 0.5: 50, INF: 100}) == 0.5


def test_quantile_of_nothing_is_none() -> None:
    assert bucket_quantile(0.99, {}) is None
    assert bucket_quantile(0.99, {0.001: 0, INF: 0}) is None


def test_bucket_delta_counts_only_the_interval() -> None:
    before = {0.001: 100, 0.01: 150, INF: 150}
    after = {0.001: 190, 0.01: 250, INF: 251}
    assert promtext.bucket_delta(before, after) == {0.001: 90, 0.01: 100, INF: 101}
    # Rank 99.99 of 101 falls in (1, 10] ms: 9.99 of its 10 observations in.
    p99 = bucket_quantile(0.99, promtext.bucket_delta(before, after))
    assert p99 == pytest.approx(0.001 + 0.009 * 9.99 / 10)


def scrape(lag: dict[str, float], stalls: float | None, worker_labels: bool = False) -> str:
    lines = [
        "# HELP analytics_loop_lag_seconds Lateness of every watchdog heartbeat tick",
        "# TYPE analytics_loop_lag_seconds histogram",
    ]
    total = 0.0
    for le, n in lag.items():
        if worker_labels:  # two series that sum (e.g. per worker)
            lines.append(f'analytics_loop_lag_seconds_bucket{{le="{le}",w="a"}} {n / 2}')
            lines.append(f'analytics_loop_lag_seconds_bucket{{le="{le}",w="b"}} {n / 2}')
        else:
            lines.append(f'analytics_loop_lag_seconds_bucket{{le="{le}"}} {n}')
        total = n
    lines.append(f"analytics_loop_lag_seconds_count {total}")
    lines.append("analytics_loop_lag_seconds_sum 0.5")
    if stalls is not None:
        lines += [
            "# HELP analytics_loop_stalls_total Event-loop stalls over the threshold",
            "# TYPE analytics_loop_stalls_total counter",
            f"analytics_loop_stalls_total {stalls}",
        ]
    lines.append('analytics_http_requests_total{route="/v1/events",status="200"} 12')
    return "\n".join(lines) + "\n"


def test_loop_figures_from_two_scrapes() -> None:
    before = scrape({"0.001": 1000, "0.005": 1000, "0.05": 1000, "+Inf": 1000}, 2)
    after = scrape({"0.001": 1900, "0.005": 1990, "0.05": 2000, "+Inf": 2000}, 7)
    lag, stalls = promtext.loop_figures(before, after)
    # 1000 ticks in the step: 900 ≤ 1 ms, 90 ≤ 5 ms, 10 ≤ 50 ms → p99 at the top of (1, 5].
    assert lag == pytest.approx(0.005)
    assert stalls == 5


def test_loop_figures_sum_label_sets() -> None:
    before = scrape({"0.001": 0, "0.01": 0, "+Inf": 0}, 0, worker_labels=True)
    after = scrape({"0.001": 100, "0.01": 200, "+Inf": 200}, 1, worker_labels=True)
    lag, stalls = promtext.loop_figures(before, after)
    assert lag == pytest.approx(0.001 + 0.009 * 98 / 100)
    assert stalls == 1


def test_no_heartbeat_means_no_loop_figures() -> None:
    """A server without a running watchdog: its stall counter stays 0, which proves nothing."""
    idle = scrape({"0.001": 0, "+Inf": 0}, 0)
    assert promtext.loop_figures(idle, idle) == (None, None)
    assert promtext.loop_figures("", "") == (None, None)
    no_counter = scrape({"0.001": 10, "+Inf": 10}, None)
    lag, stalls = promtext.loop_figures(scrape({"0.001": 0, "+Inf": 0}, None), no_counter)
    assert lag is not None and stalls is None


# --- k6 -----------------------------------------------------------------------------------------


def k6_summary(**over: object) -> dict:
    trend = {"count": 1000, "avg": 4.0, "min": 1.0, "med": 3.25, "p(95)": 9.5, "p(99)": 20.125}
    metrics = {
        "http_reqs": {"type": "counter", "values": {"count": 1010, "rate": 100.9}},
        "http_reqs{status:200}": {"values": {"count": 1000, "rate": 99.9}},
        "http_reqs{status:503}": {"values": {"count": 6, "rate": 0.6}},
        "http_reqs{status:0}": {"values": {"count": 3, "rate": 0.3}},
        "http_reqs{status:429}": {"values": {"count": 0, "rate": 0}},
        "http_req_duration": {"type": "trend", "values": {**trend, "max": 250.0}},
        "http_req_duration{kind:ingest}": {"values": {**trend, "max": 250.0}},
        "http_req_duration{kind:query}": {"values": {**trend, "count": 0, "max": 0}},
        "http_req_duration{phase:base}": {"values": {**trend, "max": 250.0}},
        "events_accepted": {"type": "counter", "values": {"count": 500000, "rate": 49900.0}},
        "dropped_iterations": {"type": "counter", "values": {"count": 12, "rate": 1.2}},
    }
    return {"metrics": metrics, "state": {"testRunDurationMs": 10_000.0}, **over}


def test_parse_k6_summary() -> None:
    got = k6.parse_k6_summary(k6_summary())
    assert got["requests"] == 1010
    assert got["achieved_rps"] == 101.0
    assert got["events_per_s"] == 50000.0
    assert (got["p50_ms"], got["p95_ms"], got["p99_ms"], got["max_ms"]) == (3.25, 9.5, 20.12, 250)
    # Zero counts are left out; what no listed status explains is "other".
    assert got["statuses"] == {"0": 3, "200": 1000, "503": 6, "other": 1}
    assert got["dropped"] == 12
    assert got["by_kind_p99_ms"] == {"ingest": 20.12}  # no query sample: not reported
    assert got["by_phase_p99_ms"] == {"base": 20.12}


def test_parse_k6_summary_of_an_empty_run() -> None:
    got = k6.parse_k6_summary({"metrics": {}, "state": {"testRunDurationMs": 0}})
    assert got["requests"] == 0 and got["achieved_rps"] == 0.0 and got["p99_ms"] is None


def test_saturation() -> None:
    assert not step().saturated
    assert step(requests=8000, dropped=2000, statuses={"200": 8000}).saturated
    assert step(statuses={"200": 9800, "503": 200}).saturated  # 2 % errors
    assert not step(statuses={"200": 9950, "503": 50}).saturated  # 0.5 %
    assert step(requests=0, statuses={}).saturated


def test_error_summary() -> None:
    s = step(statuses={"200": 10, "0": 2, "503": 3}, dropped=4)
    assert s.errors == 9
    assert s.error_summary() == "no answerx2, 503x3, not sentx4"
    assert step().error_summary() == "0"


def test_blocking_delta_counts_the_step_by_line() -> None:
    before = [
        {"signature": "a", "count": 5, "total_s": 0.5, "blocking_line": "sdk.py:121"},
        {"signature": "b", "count": 2, "total_s": 0.2, "blocking_line": "common.py:214"},
    ]
    after = [
        {"signature": "a", "count": 25, "total_s": 2.5, "blocking_line": "sdk.py:121"},
        {"signature": "a2", "count": 3, "total_s": 0.3, "blocking_line": "sdk.py:121"},
        {"signature": "b", "count": 2, "total_s": 0.2, "blocking_line": "common.py:214"},
        {"signature": "c", "count": 4, "total_s": 0.4, "blocking_line": None, "innermost": "x:1"},
        {"signature": "d", "count": 1, "total_s": 0.1, "blocking_line": None, "innermost": None},
        {
            "signature": "e",
            "count": 1,
            "total_s": 0.05,
            "blocking_line": None,
            "innermost": "../../x/lib/python3.11/asyncio/base_events.py:1 in f",
        },
    ]
    got = stalls.blocking_delta(before, after, top=3)
    assert got == [
        {"line": "sdk.py:121", "count": 23, "total_s": 2.3},
        {"line": "(loop machinery) x:1", "count": 4, "total_s": 0.4},
        {"line": "(no stack captured while it lasted)", "count": 1, "total_s": 0.1},
    ]
    got = stalls.blocking_delta(before, after, top=5)
    assert got[-1]["line"] == "(loop machinery) asyncio/base_events.py:1 in f"
    assert stalls.blocking_delta(None, None, top=3) is None  # the server has no /debug/stalls
    assert stalls.blocking_delta(after, after, top=3) == []


# --- output -----------------------------------------------------------------------------------


META = {"started": "2025-01-01 00:00:00Z", "workers": 1, "stub_latency_ms": 20, "sign": True}


def test_markdown_table() -> None:
    naive = step(
        mode="naive",
        offered_rps=100,
        requests=420,
        achieved_rps=42.0,
        statuses={"200": 420},
        dropped=580,
        p99_ms=2042.0,
        stalls=23,
        lag_p99_ms=961.0,
        blocking=[{"line": "py/analytics/billing/sdk.py:121 in notify_usage", "count": 22}],
    )
    batch = step(scenario="ingest_batch", offered_rps=120, events_per_request=500)
    batch.events_per_s = 60_000.0
    md = report.render_markdown([naive, step(), batch], META)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| mode | scenario |"))
    rows = [line for line in lines if line.startswith(("| naive |", "| service |"))]
    width = header.count("|")
    assert all(r.count("|") == width for r in rows[:3])
    assert "| naive | ingest_single | 100 | 42 ⚠ |" in md
    assert "| not sentx580 | 961 | 23 |" in md
    assert "| service | ingest_batch | 120 x500 |" in md
    assert "60,000" in md
    # The stall table names the blocking line; the headlines summarize each mode.
    assert "`py/analytics/billing/sdk.py:121 in notify_usage` (22)" in md
    assert "- **service**: ingest_single held 1,000 req/s at p99 9.0 ms" in md
    assert "ingest_batch up to 60,000 events/s acked without errors" in md
    assert "- **naive**: ingest_single: no step at p99 ≤ 50 ms" in md


def test_markdown_without_loop_metrics_says_so() -> None:
    md = report.render_markdown([step(lag_p99_ms=None, stalls=None, fresh_p99_ms=None)], META)
    assert "| 0 | n/a | n/a | n/a |" in md


def test_plot_file(tmp_path: Path) -> None:
    steps = [
        step(mode="naive", offered_rps=25, p99_ms=30.0),
        step(mode="naive", offered_rps=100, p99_ms=2000.0, requests=400, dropped=600),
        step(mode="service", offered_rps=25, p99_ms=3.0),
        step(mode="service", offered_rps=2000, p99_ms=20.0),
        step(scenario="ingest_batch", offered_rps=60, events_per_request=500, p99_ms=80.0),
    ]
    out = plot.render_plot(steps, tmp_path / "sub" / "latency.png", "a title")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 300_000


def test_write_results(tmp_path: Path) -> None:
    report.write_results(tmp_path, [step()], META)
    import json

    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["steps"][0]["p99_ms"] == 9.0
    assert (tmp_path / "results.md").read_text().startswith("Run 2025-01-01")


# --- small helpers and the plan ---------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    assert timings.percentile([], 0.99) is None
    assert timings.percentile([3.0], 0.99) == 3.0
    assert timings.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert timings.percentile([float(i) for i in range(1, 21)], 0.99) == 20.0


def keys(signing_secret: str | None) -> CustomerKeys:
    write = CreatedKey(7, "ak_7_write", signing_secret, frozenset({"write"}))
    return CustomerKeys(7, write, CreatedKey(7, "ak_7_read", None, frozenset({"read"})))


def test_probe_request_is_signed_as_the_server_verifies() -> None:
    secret = "ansk_" + "s" * 43  # as printed: the text is the HMAC key
    body, headers = probes.probe_request(keys(secret), "mixed", "lt_probe_x", 1700000000.5)
    assert body.startswith(b'{"name": "lt_probe_x", "event_id": "lt_probe_x", "ts": 1700000000500')
    assert headers["Authorization"] == "Bearer ak_7_write"
    assert headers["X-Scenario"] == "mixed_probe"
    # What the harness computed by hand before it used the extension's `sign`.
    mac = hmac.new(secret.encode(), b"1700000000." + body, "sha256").hexdigest()
    assert headers["X-Signature"] == f"t=1700000000,v1={mac}"
    verify_signature(secret.encode(), headers["X-Signature"], body, 1700000000)


def test_probe_request_of_an_unsigned_key_has_no_signature() -> None:
    _, headers = probes.probe_request(keys(None), "ingest_single", "lt_probe_y", 1.0)
    assert "X-Signature" not in headers


def test_count_points() -> None:
    answer = {"series": [{"points": [{"t": "x", "value": 0}, {"t": "y", "value": 2}]}]}
    assert probes.count_points(answer) == 2
    assert probes.count_points({"series": []}) == 0


def test_parse_rates() -> None:
    both = ["ingest_single", "ingest_batch"]
    assert plan.parse_rates(["1000,500"], both) == {
        "ingest_single": [500, 1000],
        "ingest_batch": [500, 1000],
    }
    got = plan.parse_rates(["100", "ingest_batch=2,20"], both)
    assert got == {"ingest_single": [100], "ingest_batch": [2, 20]}
    for bad in (["x=1"], ["a,b"], ["0"]):
        with pytest.raises(SystemExit):
            plan.parse_rates(bad, both)


def parsed(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_plan() -> None:
    got = plan.plan(parsed("--quick"))
    assert got.modes == ["service"] and got.scenarios == list(plan.SCENARIOS)
    assert all(len(r) <= 2 for r in got.rates.values())
    assert got.runs == {"service": list(plan.SCENARIOS)} and got.skipped == []
    got = plan.plan(parsed("--compare"))
    assert got.modes == ["naive", "threaded", "service"]
    assert got.scenarios == ["ingest_single", "ingest_batch"]
    assert got.rates["ingest_single"][0] <= 25  # below the naive variant's saturation
    assert plan.plan(parsed("--scenarios", "burst", "--rates", "100,50")).rates == {
        "burst": [50, 100]
    }


def test_command_line() -> None:
    args = cli.build_parser().parse_args(["--quick", "--compare", "--worker-class", "asyncio"])
    assert args.quick and args.compare and args.worker_classes == ["asyncio"] and args.sign
    backends = cli.build_parser().parse_args(["--worker-class", "uvloop,asyncio,trio"])
    assert backends.worker_classes == ["uvloop", "asyncio", "trio"]
    assert cli.build_parser().parse_args(["--no-sign", "--rates", "ingest_batch=2,20"]).rates == [
        "ingest_batch=2,20"
    ]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--scenarios", "ingest_single,nope"])


@pytest.mark.parametrize("how", [["-m", "benches.harness"], ["benches/harness"]])
def test_runs_from_the_checkout_as_a_module_or_a_script(how: list[str]) -> None:
    """`--help` exits before anything starts (k6 is not needed for it)."""
    got = subprocess.run(
        [sys.executable, *how, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    for flag in ("--quick", "--compare", "--profile", "--scenarios", "--rates", "--workers"):
        assert flag in got.stdout


def test_server_timings_from_the_access_log() -> None:
    lines = [
        b'{"msg":"access","scenario":"ingest_single","total_ms":%d,'
        b'"timings_ms":{"auth":0.01,"commit_wait":%d}}' % (i, i - 1)
        for i in range(1, 101)
    ]
    lines += [
        b'{"msg":"access","scenario":"ingest_single_probe","total_ms":900}',
        b'{"msg":"loop_stall","scenario":"ingest_single","total_ms":900}',
        b'{"msg":"access","scenario":"ingest_sin',  # cut by the read
    ]
    got = timings.server_timings(b"\n".join(lines), "ingest_single")
    assert got["total"] == {"p50": 50.0, "p99": 99.0}
    assert got["commit_wait"] == {"p50": 49.0, "p99": 98.0}
    assert got["auth"] == {"p50": 0.01, "p99": 0.01}
    assert timings.server_timings(b"", "ingest_single") == {}


def test_burst_and_mixed_rows_show_their_own_p99() -> None:
    burst = step(scenario="burst", offered_rps=400, by_phase_p99_ms={"base": 5.0, "burst": 80.0})
    mixed = step(scenario="mixed", by_kind_p99_ms={"ingest": 9.0, "query": 4.5})
    timed = step(
        server_ms={"total": {"p50": 1.0, "p99": 7.0}, "commit_wait": {"p50": 0.9, "p99": 6.5}}
    )
    md = report.render_markdown([burst, mixed, timed], META)
    assert "| service | burst | 400, x5 for 10 s |" in md
    assert "| 9.0 (burst 80.0) |" in md
    assert "| 9.0 (queries 4.5) |" in md
    assert "| service | ingest_single | 1,000 | 1.00 / 7.00 | commit_wait 0.90 / 6.50 |" in md


def test_summarize_profile() -> None:
    raw = "\n".join(
        [
            "run (asyncio/runners.py:118);_ingest (analytics/api/ingest.py:71) 30",
            "run (asyncio/runners.py:118);app (starlette/routing.py:58) 50",
            "run (asyncio/runners.py:118);handle (hypercorn/protocol/h11.py:255) 15",
            "run (asyncio/runners.py:118) 5",
            "garbage",
        ]
    )
    got = pyspy.summarize_profile(raw, top=2)
    assert got["samples"] == 100
    assert got["by_group"] == {
        "starlette": 0.5,
        "analytics (this service)": 0.3,
        "hypercorn + h11": 0.15,
        "asyncio": 0.05,
    }
    assert got["top_self"] == [
        {"frame": "app (starlette/routing.py:58)", "share": 0.5},
        {"frame": "_ingest (analytics/api/ingest.py:71)", "share": 0.3},
    ]
    assert pyspy.summarize_profile("") == {}
    md = report.render_markdown([step(profile=got)], META)
    assert (
        "| service | ingest_single | 1,000 | 100 | starlette 50%, analytics (this service) 30%"
        in md
    )


def test_stall_culprits_from_the_log() -> None:
    log = b"\n".join(
        [
            b'{"event":"loop_stall","phase":"started","duration_s":0.06,"suppressed":0,'
            b'"culprit":"/w/main/py/analytics/pipeline/writer.py:232 in _write"}',
            b'{"event":"loop_stall","phase":"ended","duration_s":0.08,"suppressed":0,'
            b'"culprit":"/w/main/py/analytics/pipeline/writer.py:232 in _write"}',
            b'{"event":"loop_stall","phase":"started","duration_s":0.05,"suppressed":3,'
            b'"culprit":"/x/lib/python3.11/asyncio/tasks.py:851 in shield"}',
            b'{"msg":"access","scenario":"ingest_single","total_ms":1}',
        ]
    )
    assert stalls.stall_culprits(log, top=3) == [
        {"line": "asyncio/tasks.py:851 in shield", "count": 4, "total_s": 0.05},
        {"line": "py/analytics/pipeline/writer.py:232 in _write", "count": 1, "total_s": 0.06},
    ]
    assert stalls.stall_culprits(b"", top=3) == []
