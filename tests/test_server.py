"""The service as it is deployed: `analytics serve` in its own process, Hypercorn, real HTTP."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest

SERVE = [sys.executable, "-m", "analytics.cli", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request, blank_dsn) -> Iterator[dict]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": blank_dsn}
    proc = subprocess.Popen(
        [*SERVE, "--port", str(port), "--worker-class", request.param],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    keys, lines = {}, []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "write key:" in line or "read key:" in line:
                keys[line.split()[0]] = line.split()[-1]
            if "serving on" in line or not line:
                break
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start:\n" + "".join(lines))
        yield {"base": base, "write": keys["write"], "read": keys["read"], "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_ingest_and_query_through_hypercorn(server):
    base = server["base"]
    write = {"Authorization": f"Bearer {server['write']}", "Content-Type": "application/json"}
    read = {"Authorization": f"Bearer {server['read']}"}
    with httpx.Client(base_url=base, timeout=10) as client:
        now_ms = int(time.time() * 1000)
        batch = {"events": [{"name": "tick", "event_id": f"t{i}", "ts": now_ms} for i in range(20)]}
        body = gzip.compress(json.dumps(batch).encode())
        r = client.post("/v1/batch", content=body, headers={**write, "Content-Encoding": "gzip"})
        assert r.json() == {"accepted": 20, "duplicates": 0, "rejected": []}
        r = client.post("/v1/batch", content=body, headers={**write, "Content-Encoding": "gzip"})
        assert r.json() == {"accepted": 0, "duplicates": 20, "rejected": []}
        m = client.get("/v1/metrics", params={"event": "tick", "interval": "minute"}, headers=read)
        assert sum(p["value"] for p in m.json()["series"][0]["points"]) == 20
        # A declared size over the cap is refused before the body is read.
        big = client.post(
            "/v1/events",
            content=b"x" * (2 << 20),
            headers={**write, "Content-Length": str(2 << 20)},
        )
        assert (big.status_code, big.json()["code"]) == (413, "body_too_large")
        assert client.get("/readyz").json() == {"status": "ready"}


def test_sigterm_exits_cleanly(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
