"""The vendor's blocking billing SDK against the billing stub, over real HTTP.

Each stub runs as `python -m analytics.billing.stub` (Hypercorn) in its own process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from analytics.billing.sdk import BillingClient, BillingError, UsageReceipt

STUB = [sys.executable, "-m", "analytics.billing.stub"]
START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
END = START + timedelta(minutes=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stub:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def usage(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/usage", timeout=5).json()

    def configure(self, **changes: float) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/admin/config", json=changes, timeout=5)
        r.raise_for_status()
        return r.json()

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def start_stub(tmp_path: Path) -> Iterator[Callable[..., Stub]]:
    """Start a stub with extra CLI `args`; answers once it serves `GET /usage`."""
    stubs: list[Stub] = []

    def start(*args: str, port: int | None = None) -> Stub:
        port = port or free_port()
        log = tmp_path / f"stub-{len(stubs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*STUB, "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT
            )
        stub = Stub(f"http://127.0.0.1:{port}", port, proc, log)
        stubs.append(stub)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{stub.base}/usage", timeout=1).status_code == 200:
                    return stub
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"billing stub did not start:\n{log.read_text()}")

    yield start
    for stub in stubs:
        stub.stop()


def client_for(stub: Stub, **options: Any) -> BillingClient:
    return BillingClient(stub.base, api_key="test", **options)


def test_notify_usage_is_recorded(start_stub):
    stub = start_stub("--latency-ms", "0")
    with client_for(stub) as client:
        receipt = client.notify_usage(7, 5, START, END, "k1")
    assert receipt == UsageReceipt(accepted=True, duplicate=False)
    assert stub.usage() == {"customers": {"7": 5}, "calls": 1, "duplicates": 0, "failures": 0}


def test_repeated_idempotency_key_is_not_counted_twice(start_stub):
    stub = start_stub("--latency-ms", "0")
    with client_for(stub) as client:
        client.notify_usage(7, 5, START, END, "k1")
        again = client.notify_usage(7, 5, START, END, "k1")
        client.notify_usage("7", 2, START, END, "k2")
    assert again == UsageReceipt(accepted=True, duplicate=True)
    assert stub.usage() == {"customers": {"7": 7}, "calls": 3, "duplicates": 1, "failures": 0}


def test_same_key_with_another_body_is_a_conflict_not_retried(start_stub):
    stub = start_stub("--latency-ms", "0")
    with client_for(stub) as client:
        client.notify_usage(7, 5, START, END, "k1")
        with pytest.raises(BillingError) as caught:
            client.notify_usage(7, 6, START, END, "k1")
    assert caught.value.status == 409
    assert not caught.value.retryable
    assert stub.usage() == {"customers": {"7": 5}, "calls": 2, "duplicates": 0, "failures": 0}


def test_billing_down_is_retryable_after_the_sdk_retries(start_stub):
    stub = start_stub("--latency-ms", "0", "--fail-rate", "1.0")
    with client_for(stub, retries=2, backoff_s=0.01) as client:
        with pytest.raises(BillingError) as caught:
            client.notify_usage(7, 5, START, END, "k1")
    assert caught.value.retryable
    assert caught.value.status == 503
    assert stub.usage() == {"customers": {}, "calls": 3, "duplicates": 0, "failures": 3}


def test_billing_slower_than_the_timeout_is_retryable_and_bounded(start_stub):
    stub = start_stub("--latency-ms", "2000")
    with client_for(stub, timeout_s=0.2, retries=1, backoff_s=0.01) as client:
        began = time.monotonic()
        with pytest.raises(BillingError) as caught:
            client.notify_usage(7, 5, START, END, "k1")
        elapsed = time.monotonic() - began
    assert caught.value.retryable
    assert caught.value.status is None
    assert elapsed < 1.5  # 2 attempts x 0.2 s, generous slack; one full answer takes 2 s
    assert stub.usage()["calls"] == 2


def test_admin_config_changes_behaviour_at_run_time(start_stub):
    stub = start_stub("--latency-ms", "0")
    with client_for(stub, timeout_s=0.3, retries=0) as client:
        client.notify_usage(7, 1, START, END, "k1")
        assert stub.configure(latency_ms=1000) == {"latency_ms": 1000, "fail_rate": 0.0}
        with pytest.raises(BillingError) as caught:
            client.notify_usage(7, 1, START, END, "k2")
        assert caught.value.retryable
        stub.configure(latency_ms=0, fail_rate=1.0)
        with pytest.raises(BillingError) as caught:
            client.notify_usage(7, 1, START, END, "k3")
        assert caught.value.status == 503
        stub.configure(fail_rate=0.0)
        assert not client.notify_usage(7, 1, START, END, "k3").duplicate


def test_seeded_failures_are_reproducible(start_stub):
    stub = start_stub("--latency-ms", "0")

    def outcomes() -> list[bool]:
        httpx.post(f"{stub.base}/admin/reset", timeout=5).raise_for_status()
        stub.configure(fail_rate=0.5, seed=42)
        results = []
        with client_for(stub, retries=0, timeout_s=10) as client:
            for i in range(16):
                try:
                    client.notify_usage(7, 1, START, END, f"k{i}")
                    results.append(True)
                except BillingError:
                    results.append(False)
        return results

    first = outcomes()
    assert first == outcomes()
    assert 0 < sum(first) < len(first)


def test_one_client_shared_by_worker_threads(start_stub):
    stub = start_stub("--latency-ms", "20")
    with client_for(stub, pool_size=8) as client, ThreadPoolExecutor(8) as threads:
        receipts = list(
            threads.map(lambda i: client.notify_usage(i % 4, 1, START, END, f"k{i}"), range(40))
        )
    assert all(r.accepted and not r.duplicate for r in receipts)
    assert stub.usage()["customers"] == {str(c): 10 for c in range(4)}


def test_state_file_keeps_totals_and_keys_across_restarts(start_stub, tmp_path):
    state = tmp_path / "billing.json"
    stub = start_stub("--latency-ms", "0", "--state", str(state))
    with client_for(stub) as client:
        client.notify_usage(7, 5, START, END, "k1")
        client.notify_usage(8, 3, START, END, "k2")
        client.notify_usage(7, 5, START, END, "k1")
        before = stub.usage()
        assert stub.stop() == 0

        # Same port and the same client: its pooled connection is dead and gets replaced.
        stub = start_stub("--latency-ms", "0", "--state", str(state), port=stub.port)
        assert stub.usage() == before
        assert client.notify_usage(7, 5, START, END, "k1").duplicate
        with pytest.raises(BillingError) as caught:
            client.notify_usage(8, 4, START, END, "k2")
        assert caught.value.status == 409
        client.notify_usage(8, 1, START, END, "k3")
    assert stub.usage()["customers"] == {"7": 5, "8": 4}
