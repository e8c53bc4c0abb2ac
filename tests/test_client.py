"""`analytics.client` against a real `analytics serve`: batching, gzip, signing, retries
(Retry-After, a server restart mid-stream) with nothing lost or counted twice, bounded
queue drops, flush at close and at interpreter exit, and the async client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import anyio
import pytest

from analytics.client import AsyncClient, Client
from dbutil import fetch, fetchval
from serverproc import free_port, running_server


def create_key(dsn: str, customer: str, *extra: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "analytics.cli", "keys", "create", "--customer", customer,
         "--scopes", "write,read", *extra, "--json"],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def counts(dsn: str, customer_id: object) -> tuple[int, int]:
    """(rows, distinct event ids) stored for the customer."""
    row = fetch(
        dsn,
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM events WHERE customer_id = $1",
        customer_id,
    )[0]
    return row["n"], row["ids"]


@pytest.fixture(scope="module")
def server(pg_dsn):
    with running_server(pg_dsn) as server:
        yield server


def test_signed_gzipped_batches_are_stored_once(server, pg_dsn):
    key = create_key(pg_dsn, "client-signed", "--signing")
    with Client(server.base, str(key["key"]), signing_secret=str(key["signing_secret"])) as c:
        ids = [c.track("Signup", user_id=i % 7, properties={"path": "/a"}) for i in range(1200)]
        assert c.flush(30)
        assert c.stats.accepted == 1200
        # The same event ids again: duplicates, not new events.
        for event_id in ids[:100]:
            c.track("Signup", event_id=event_id)
        assert c.flush(30)
        stats = c.stats
    assert (stats.accepted, stats.duplicates, stats.dropped, stats.failed) == (1200, 100, 0, 0)
    assert counts(pg_dsn, key["customer_id"]) == (1200, 1200)


def test_a_wrong_secret_is_a_final_error_reported_to_on_error(server, pg_dsn):
    key = create_key(pg_dsn, "client-badsig", "--signing")
    errors: list[tuple[Exception, int]] = []
    c = Client(server.base, str(key["key"]), signing_secret="00" * 32,
               on_error=lambda e, n: errors.append((e, n)))  # fmt: skip
    c.track("x")
    assert c.close(30)
    assert (c.stats.failed, c.stats.retries) == (1, 0)
    assert "bad_signature" in str(errors[0][0])


def test_retry_after_from_the_rate_limit_is_honoured_and_nothing_doubles(pg_dsn):
    key = create_key(pg_dsn, "client-ratelimited")
    env = {"ANALYTICS_RATE_LIMIT_PER_S": "2", "ANALYTICS_RATE_LIMIT_BURST": "1"}
    with running_server(pg_dsn, **env) as server:
        c = Client(server.base, str(key["key"]), batch_size=20)
        for i in range(100):
            c.track("Tick", properties={"i": i})
        assert c.close(60)
    assert c.stats.retries > 0
    assert (c.stats.accepted, c.stats.failed) == (100, 0)
    assert counts(pg_dsn, key["customer_id"]) == (100, 100)


def test_a_server_restart_mid_stream_loses_nothing_and_doubles_nothing(pg_dsn):
    key = create_key(pg_dsn, "client-restart")
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="client-restart-")
    c = Client(f"http://127.0.0.1:{port}", str(key["key"]), batch_size=50, max_backoff_s=1)
    tracked: list[str | None] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            tracked.append(c.track("Tick", properties={"n": len(tracked)}))
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    with running_server(pg_dsn, port=port, ANALYTICS_DATA_DIR=data_dir) as server:
        producer.start()
        while c.stats.accepted < 200:
            time.sleep(0.05)
        assert server.stop() == 0  # SIGTERM mid-stream; the producer keeps going
    before = len(tracked)
    while len(tracked) < before + 300:  # produced while nothing listens
        time.sleep(0.05)
    with running_server(pg_dsn, port=port, ANALYTICS_DATA_DIR=data_dir):
        while c.stats.accepted < before + 300:
            time.sleep(0.05)
        stop.set()
        producer.join()
        assert c.close(60)
    stats = c.stats
    assert None not in tracked and stats.dropped == 0 and stats.failed == 0
    assert stats.retries > 0
    assert stats.accepted + stats.duplicates >= len(tracked)
    assert counts(pg_dsn, key["customer_id"]) == (len(tracked), len(tracked))


def test_a_full_queue_drops_and_counts():
    # Nothing listens on the port: the sender retries one batch while the queue fills.
    c = Client(f"http://127.0.0.1:{free_port()}", "ak_x", max_queue=10, batch_size=1)
    results = [c.track("x") for _ in range(100)]
    dropped = results.count(None)
    assert dropped >= 89
    assert c.stats.dropped == dropped
    assert not c.close(0.2)


def test_events_left_at_interpreter_exit_are_flushed(server, pg_dsn):
    key = create_key(pg_dsn, "client-atexit")
    script = (
        "from analytics.client import Client\n"
        f"c = Client({server.base!r}, {str(key['key'])!r})\n"
        "for i in range(250): c.track('bye', event_id=f'e{i}')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert counts(pg_dsn, key["customer_id"]) == (250, 250)


def test_the_async_client(server, pg_dsn):
    key = create_key(pg_dsn, "client-async")

    async def main() -> None:
        async with AsyncClient(server.base, str(key["key"])) as c:
            for i in range(300):
                c.track("Async", value=i)
            assert await c.flush(30)
            assert c.stats.accepted == 300

    anyio.run(main)
    assert counts(pg_dsn, key["customer_id"]) == (300, 300)
    assert fetchval(pg_dsn, "SELECT sum(value) FROM events WHERE customer_id = $1",
                    key["customer_id"]) == sum(range(300))  # fmt: skip
