"""Failure and overload behaviour against a real Hypercorn process: SIGTERM mid-stream,
billing down and back, billing slow, writer inbox full."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import asyncpg
import httpx2 as httpx
import pytest

from dbutil import fetch
from serverproc import BACKENDS, free_port, running_server, running_stub


def batch(prefix: str, n: int) -> bytes:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {"events": [{"name": "load", "event_id": f"{prefix}-{i}", "ts": now_ms} for i in range(n)]}
    ).encode()


@pytest.mark.parametrize("worker_class", BACKENDS)
def test_sigterm_mid_stream_loses_no_acknowledged_event(blank_dsn, worker_class):
    acked: list[str] = []
    lock = threading.Lock()
    with running_server(blank_dsn, "--worker-class", worker_class) as server:
        headers = {**server.headers("write"), "Content-Type": "application/json"}
        stop = threading.Event()

        def producer(worker: int) -> None:
            with httpx.Client(base_url=server.base, timeout=30) as client:
                seq = 0
                while not stop.is_set():
                    prefix = f"w{worker}-{seq}"
                    seq += 1
                    try:
                        r = client.post("/v1/batch", content=batch(prefix, 50), headers=headers)
                    except httpx.TransportError:
                        return  # the server is going away
                    if r.status_code == 200:
                        assert r.json()["accepted"] == 50
                        with lock:
                            acked.extend(f"{prefix}-{i}" for i in range(50))

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(producer, w) for w in range(4)]
            time.sleep(1.5)
            assert server.stop() == 0  # SIGTERM with requests in flight; clean exit
            stop.set()
            for f in futures:
                f.result()
    assert len(acked) > 500
    rows = fetch(blank_dsn, "SELECT event_id, count(*) AS n FROM events GROUP BY event_id")
    stored = {r["event_id"]: r["n"] for r in rows}
    assert all(n == 1 for n in stored.values())  # none twice
    assert set(acked) <= set(stored)  # every acknowledged event is there


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stub_usage(url: str) -> dict:
    return httpx.get(f"{url}/usage", timeout=5).json()


BILLING_FAST = {
    "ANALYTICS_BILLING_WINDOW_S": "1",
    "ANALYTICS_BILLING_POLL_S": "0.2",
    "ANALYTICS_BILLING_MAX_BACKOFF_S": "1",
    "ANALYTICS_BILLING_TIMEOUT_S": "0.5",
}


@pytest.mark.parametrize("worker_class", BACKENDS)
def test_billing_outage_loses_nothing_and_counts_once(blank_dsn, tmp_path, worker_class):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = str(tmp_path / "billing.json")
    args = ("--worker-class", worker_class)
    with running_server(blank_dsn, *args, BILLING_URL=url, **BILLING_FAST) as server:
        headers = {**server.headers("write"), "Content-Type": "application/json"}

        def send(prefix: str, n: int) -> None:
            r = httpx.post(f"{server.base}/v1/batch", content=batch(prefix, n), headers=headers)
            assert r.json()["accepted"] == n

        with running_stub(port, "--state", state, "--latency-ms", "5"):
            send("a", 30)
            wait_until(lambda: stub_usage(url)["customers"].get("1") == 30, 20, "first usage")
        # Billing is down: ingestion goes on, usage waits in the outbox.
        send("b", 40)
        time.sleep(3)
        with running_stub(port, "--state", state, "--latency-ms", "5"):
            wait_until(lambda: stub_usage(url)["customers"].get("1") == 70, 30, "catch-up")
            time.sleep(1.5)  # a resend would show up as extra usage
            assert stub_usage(url)["customers"] == {"1": 70}
    rows = fetch(
        blank_dsn,
        "SELECT count(*) FILTER (WHERE sent_at IS NULL) AS pending, sum(count) AS total,"
        " max(attempts) AS attempts FROM usage_dispatch",
    )
    assert (rows[0]["pending"], rows[0]["total"]) == (0, 70)
    assert rows[0]["attempts"] > 1  # the outage really made calls fail


def test_slow_billing_never_slows_ingestion(blank_dsn):
    """With every billing call taking 500 ms, no ingest request waits for one: the SDK runs
    in `billing_sdk` threads, never on the event loop."""
    port = free_port()
    with running_stub(port, "--latency-ms", "500") as url:
        env = {**BILLING_FAST, "ANALYTICS_BILLING_TIMEOUT_S": "2"}
        with running_server(blank_dsn, BILLING_URL=url, **env) as server:
            headers = {**server.headers("write"), "Content-Type": "application/json"}
            latencies = []
            with httpx.Client(base_url=server.base, timeout=10) as client:
                # The first requests open the server's connections (on Citus the coordinator's
                # to every worker, for each writer connection): not a wait for billing, whose
                # first call comes after the first window; not timed.
                for _ in range(3):
                    event = {"name": "slow", "event_id": uuid.uuid4().hex}
                    assert client.post("/v1/events", json=event, headers=headers).status_code == 200
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    event = {"name": "slow", "event_id": uuid.uuid4().hex}
                    started = time.perf_counter()
                    r = client.post("/v1/events", json=event, headers=headers)
                    latencies.append(time.perf_counter() - started)
                    assert r.status_code == 200
            calls = stub_usage(url)["calls"]
    assert calls >= 2  # billing calls really overlapped the ingest traffic
    assert max(latencies) < 0.5, max(latencies)


@pytest.mark.parametrize(
    ("cap", "worker_class"),
    [
        # The request cap on every backend; the row cap (the same code path) on the default.
        *[pytest.param({"ANALYTICS_WRITER_INBOX": "1"}, b, id=f"requests-{b}") for b in BACKENDS],
        pytest.param({"ANALYTICS_WRITER_INBOX_ROWS": "5"}, "uvloop", id="rows-uvloop"),
    ],
)
def test_full_writer_inbox_answers_503_at_once(blank_dsn, cap, worker_class):
    env = {
        **cap,
        "ANALYTICS_WRITER_CONNECTIONS": "1",
        "ANALYTICS_WRITER_WINDOW_S": "0",
        "ANALYTICS_COMMIT_TIMEOUT_S": "30",
        "ANALYTICS_REQUEST_TIMEOUT_S": "30",
    }
    with running_server(blank_dsn, "--worker-class", worker_class, **env) as server:
        headers = {**server.headers("write"), "Content-Type": "application/json"}

        async def hold_dedup_lock(locked: threading.Event, release: threading.Event):
            conn = await asyncpg.connect(blank_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE dedup IN EXCLUSIVE MODE")
                    locked.set()
                    await anyio.to_thread.run_sync(release.wait)
            finally:
                await conn.close()

        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=anyio.run, args=(hold_dedup_lock, locked, release))
        holder.start()
        locked.wait(10)
        try:
            with ThreadPoolExecutor(2) as pool, httpx.Client(base_url=server.base) as client:
                # One batch blocks in the writer's commit, the next fills the inbox (sent
                # apart, so the writer cannot take both into one commit)...
                stuck = []
                for i in range(2):
                    stuck.append(
                        pool.submit(
                            client.post,
                            "/v1/batch",
                            content=batch(f"s{i}", 5),
                            headers=headers,
                            timeout=30,
                        )
                    )
                    time.sleep(0.5)
                # ...so the rest are refused at once instead of queueing.
                refused = []
                for i in range(5):
                    started = time.perf_counter()
                    r = client.post("/v1/batch", content=batch(f"r{i}", 5), headers=headers)
                    refused.append((r.status_code, r.json()["code"], time.perf_counter() - started))
                    assert int(r.headers["Retry-After"]) >= 1
                assert [(s, c) for s, c, _ in refused] == [(503, "overloaded")] * 5
                assert all(elapsed < 2 for _, _, elapsed in refused)
                release.set()
                assert [f.result().json()["accepted"] for f in stuck] == [5, 5]
        finally:
            release.set()
            holder.join()
