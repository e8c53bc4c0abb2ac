"""The service on every backend Hypercorn runs it on (uvloop, asyncio, trio), end to end: real
`analytics serve` processes, real HTTP. The suites of test_server.py and test_resilience.py
(ingest, dedup, query, SIGTERM, billing outage, inbox full) are parametrized the same way."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest

from serverproc import BACKENDS, running_server

TESTS = Path(__file__).resolve().parent


def cache_hits(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("analytics_cache_hits_total")
    )


@pytest.mark.parametrize("worker_class", BACKENDS)
def test_the_cache_is_never_stale_across_two_servers(blank_dsn, worker_class):
    """Server B caches a closed range; server A (another process on the same database)
    acknowledges a late event inside it; B's very next read counts it."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    params = {
        "event": "late",
        "interval": "hour",
        "from": (hour - timedelta(hours=3)).isoformat(),
        "to": hour.isoformat(),  # only closed buckets: cacheable
    }
    late = {"name": "late", "ts": int((hour - timedelta(hours=2)).timestamp() * 1000)}
    with (
        running_server(blank_dsn, "--worker-class", worker_class) as a,
        running_server(blank_dsn, "--worker-class", worker_class) as b,
    ):
        write = {**a.headers("write"), "Content-Type": "application/json"}
        read = a.headers("read")

        def total() -> int:
            r = httpx.get(f"{b.base}/v1/metrics", params=params, headers=read, timeout=10)
            assert r.status_code == 200, r.text
            return sum(p["value"] for p in r.json()["series"][0]["points"])

        for expected in range(1, 3):
            event = late | {"event_id": f"late-{expected}"}
            r = httpx.post(f"{a.base}/v1/events", json=event, headers=write, timeout=10)
            assert r.json()["accepted"] == 1
            before = cache_hits(b.base)
            assert total() == expected
            assert total() == expected
            assert cache_hits(b.base) == before + 1  # the second read came from B's cache
        assert b.stop() == 0 and a.stop() == 0


def stall_reports(output: list[str]) -> list[dict]:
    reports = []
    for line in list(output):
        if '"loop_stall"' in line:
            record = json.loads(line)
            if record.get("event") == "loop_stall" and record.get("phase") == "started":
                reports.append(record)
    return reports


@pytest.mark.parametrize("worker_class", BACKENDS)
def test_the_watchdog_names_the_blocking_line_of_a_request_handler(blank_dsn, worker_class):
    """A route added for the test (tests/blocking_app.py) calls `time.sleep` on the loop: the
    worker's `loop_stall` report has that line as the innermost frame, and the request."""
    source = (TESTS / "blocking_app.py").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(source) if "time.sleep(BLOCK_S)" in text)
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "blocking_app", "serve"]
    with running_server(
        blank_dsn, "--worker-class", worker_class, command=command, PYTHONPATH=path
    ) as server:
        r = httpx.get(
            f"{server.base}/test/block", headers={"X-Request-ID": "blocker-1"}, timeout=10
        )
        assert r.text == "blocked"
        deadline = time.monotonic() + 10
        while not (reports := stall_reports(server.output)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stop() == 0
    assert reports, "no loop_stall report"
    [report] = [r for r in reports if r["context"].get("request_id") == "blocker-1"]
    innermost = report["stack"][-1]
    assert (Path(innermost["file"]).name, innermost["line"]) == ("blocking_app.py", line)
    assert report["context"]["route"] == "/test/block"
    assert report["duration_s"] >= 0.05
