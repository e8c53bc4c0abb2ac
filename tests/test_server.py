"""The service as it is deployed: `analytics serve` in its own process, Hypercorn, real HTTP."""

from __future__ import annotations

import gzip
import json
import time

import httpx2 as httpx
import pytest

from serverproc import running_server


@pytest.mark.parametrize("worker_class", ["uvloop", "asyncio", "trio"])
def test_ingest_and_query_through_hypercorn(blank_dsn, worker_class):
    with running_server(blank_dsn, "--worker-class", worker_class) as server:
        write = {**server.headers("write"), "Content-Type": "application/json"}
        with httpx.Client(base_url=server.base, timeout=10) as client:
            now_ms = int(time.time() * 1000)
            events = [{"name": "tick", "event_id": f"t{i}", "ts": now_ms} for i in range(20)]
            body = gzip.compress(json.dumps({"events": events}).encode())
            gz = {**write, "Content-Encoding": "gzip"}
            r = client.post("/v1/batch", content=body, headers=gz)
            assert r.json() == {"accepted": 20, "duplicates": 0, "rejected": []}
            r = client.post("/v1/batch", content=body, headers=gz)
            assert r.json() == {"accepted": 0, "duplicates": 20, "rejected": []}
            params = {"event": "tick", "interval": "minute"}
            m = client.get("/v1/metrics", params=params, headers=server.headers("read"))
            assert sum(p["value"] for p in m.json()["series"][0]["points"]) == 20
            # A declared size over the cap is refused before the body is read.
            headers = {**write, "Content-Length": str(2 << 20)}
            big = client.post("/v1/events", content=b"x" * (2 << 20), headers=headers)
            assert (big.status_code, big.json()["code"]) == (413, "body_too_large")
            assert client.get("/readyz").json() == {"status": "ready"}
        assert server.stop() == 0  # SIGTERM: a clean exit
