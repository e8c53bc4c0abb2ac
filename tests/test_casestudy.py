"""The case-study baselines (benches/casestudy) against a real PostgreSQL and billing stub.

Each variant runs as its own server process, as the load harness starts it; a batch and a
single event go in, and the rows, the rollups, billing's usage and the watchdog's endpoints
are checked.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import httpx2 as httpx
import orjson
import pytest

from analytics.store.bootstrap import create_customer_key
from serverproc import free_port, running_stub, serving

ROOT = Path(__file__).resolve().parents[1]


async def _make_key(dsn: str, scopes: set[str]) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        customer, key = await create_customer_key(
            conn, "casestudy", scopes, False, datetime.now(UTC)
        )
        return customer, key.key
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def variant_server(variant: str, dsn: str, billing_url: str, *args: str, script: bool = False):
    """The variant as the load harness starts it: `python -m benches.casestudy.serve` from
    the repository root, or (`script`) `python benches/casestudy/serve.py`."""
    module = ["-m", "benches.casestudy.serve"]
    how = [str(ROOT / "benches" / "casestudy" / "serve.py")] if script else module
    return serving(
        [sys.executable, *how, "--variant", variant, *args],
        "/healthz",
        cwd=str(ROOT if not script else ROOT / "tests"),
        env={"DATABASE_URL": dsn, "BILLING_URL": billing_url},
        ready_s=20,
    )


def _event(i: int, **extra: object) -> dict:
    return {
        "name": "Page View",
        "event_id": f"evt-{i}",
        "ts": "2024-05-01T12:00:30Z",
        "user_id": f"u{i}",
        "value": 1.5,
        "properties": {"path": f"/p/{i}", "country": "DE"},
        **extra,
    }


@pytest.mark.parametrize("variant", ["naive", "threaded"])
def test_variant_ingests_stores_bills_and_reports(variant: str, fresh_dsn: str) -> None:
    customer, key = anyio.run(_make_key, fresh_dsn, {"write", "read"})
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "X-Scenario": "test",
    }
    with (
        running_stub(free_port(), "--latency-ms", "1") as billing,
        variant_server(variant, fresh_dsn, billing) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        batch = {"events": [_event(1), _event(2), _event(1), {"name": 42}]}
        r = client.post("/v1/batch", content=orjson.dumps(batch), headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 2 and body["duplicates"] == 1
        assert [(e["index"], e["code"], e["retryable"]) for e in body["rejected"]] == [
            (3, "invalid_name", False)
        ]

        r = client.post("/v1/events", content=orjson.dumps(_event(3)), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}

        # Errors in the real service's shape.
        bad = client.post("/v1/events", content=b"{}", headers={**headers, "Authorization": "x"})
        assert (bad.status_code, bad.json()["code"]) == (401, "missing_key")
        wrong = client.post("/v1/events", content=b"[", headers=headers)
        assert (wrong.status_code, wrong.json()["code"]) == (400, "invalid_json")

        q = {"event": "page view", "from": "2024-05-01T11:00:00Z", "to": "2024-05-01T13:00:00Z"}
        r = client.get("/v1/metrics", params=q, headers=headers)
        assert r.status_code == 200, r.text
        points = r.json()["series"][0]["points"]
        assert points == [
            {"t": "2024-05-01T11:00:00Z", "value": 0},
            {"t": "2024-05-01T12:00:00Z", "value": 3},
        ]

        prom = client.get("/metrics").text
        assert "analytics_loop_lag_seconds_count" in prom
        assert "analytics_loop_stalls_total" in prom
        stalls = client.get("/debug/stalls").json()
        assert stalls["watchdog"] is True and stalls["variant"] == variant

        usage = httpx.get(f"{billing}/usage", timeout=5).json()
        # One call per accepted request (the bad ones never reached billing).
        assert usage["calls"] == 2
        assert usage["customers"] == {str(customer): 3}

    events = anyio.run(_fetch, fresh_dsn, "SELECT dedup_key, name, value, properties FROM events")
    assert sorted(r["dedup_key"] for r in events) == ["id:evt-1", "id:evt-2", "id:evt-3"]
    assert {r["name"] for r in events} == {"page view"}
    assert orjson.loads(events[0]["properties"])["country"] == "DE"
    dedup = anyio.run(_fetch, fresh_dsn, "SELECT count(*) AS n FROM dedup")
    assert dedup[0]["n"] == 3
    rollups = anyio.run(
        _fetch, fresh_dsn, "SELECT dim, dim_value, bucket, count, sum_value FROM rollup_minute"
    )
    assert [tuple(r) for r in rollups] == [
        ("", "", datetime(2024, 5, 1, 12, 0, tzinfo=UTC), 3, 4.5)
    ]


def test_resent_batch_is_all_duplicates(fresh_dsn: str) -> None:
    _, key = anyio.run(_make_key, fresh_dsn, {"write"})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = orjson.dumps({"events": [_event(1), _event(2)]})
    with (
        running_stub(free_port(), "--latency-ms", "1") as billing,
        variant_server("threaded", fresh_dsn, billing, "--no-watchdog", script=True) as base,
    ):
        first = httpx.post(f"{base}/v1/batch", content=body, headers=headers, timeout=10)
        again = httpx.post(f"{base}/v1/batch", content=body, headers=headers, timeout=10)
        assert first.json()["accepted"] == 2
        assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 2)
        # A write-only key cannot query.
        r = httpx.get(f"{base}/v1/metrics", params={"event": "x"}, headers=headers, timeout=10)
        assert (r.status_code, r.json()["code"]) == (403, "wrong_scope")


def test_nothing_in_the_package_imports_the_casestudy() -> None:
    """The baselines are run as separate processes (the load harness starts them); the
    package never imports them."""
    imports = re.compile(r"^\s*(from|import)\s+benches\b|import_module\(['\"]benches", re.M)
    for path in (ROOT / "py").rglob("*.py"):
        assert not imports.search(path.read_text()), path
