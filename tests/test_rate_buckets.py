"""Per-key rate limits shared by every worker: tokens leased from a bucket row in
PostgreSQL (store/rate_buckets.py), spent locally (runtime/leases.py).

The bound under test: a key is admitted at most `burst + rate * t + workers * lease` times in
any interval of length t (tokens leased are gone from the shared bucket; the last term is the
leases filled before the interval and spent in it), and PostgreSQL sees one call per lease.
"""

from __future__ import annotations

import socket
import time

import anyio
import asyncpg
import pytest
from tests.dbutil import fetch
from tests.serverproc import connection_owner, read_responses, running_server, wait_for_workers

from analytics.api.auth import rate_limit
from analytics.api.errors import ApiError
from analytics.runtime.leases import LeasedBuckets, lease_size
from analytics.runtime.ratelimit import TokenBuckets
from analytics.store.keys import KeyInfo
from analytics.store.rate_buckets import lease_tokens


def leased(pool, rate: float, burst: float, size: int) -> LeasedBuckets:
    async def lease(name: str, want: int) -> tuple[int, float]:
        customer_id, _, key_id = name.partition(":")
        got = await lease_tokens(pool, int(customer_id), key_id, want, rate_per_s=rate, burst=burst)
        return got.granted, got.wait_s(rate)

    return LeasedBuckets(lease, size, TokenBuckets(rate, burst))


def test_lease_size():
    assert lease_size(2000, 4000, 0.05) == 100
    assert lease_size(2, 1, 0.05) == 1  # small limits: a lease per request
    assert lease_size(1, 40, 5) == 5
    assert lease_size(1000, 40, 1) == 10  # at most a quarter of the burst


@pytest.mark.anyio
async def test_two_workers_share_one_bucket_and_the_database_sees_one_call_per_lease(fresh_dsn):
    rate, burst, size = 0.001, 20, 5  # no refill to speak of during the test
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    try:
        a, b = leased(pool, rate, burst, size), leased(pool, rate, burst, size)
        admitted = 0
        for _ in range(30):
            for worker in (a, b):
                if await worker.take("7:0000abcd") == 0.0:
                    admitted += 1
                # The bound holds at every step: what the bucket gave out covers what was
                # admitted plus what the workers still hold.
                assert admitted + a.unspent("7:0000abcd") + b.unspent("7:0000abcd") <= burst
        assert admitted == burst  # two per-process buckets would have admitted 2 * burst
        # One call per lease of `size`, plus one empty lease per worker, then none: a refused
        # key is refused locally until its bucket holds a token again.
        assert a.leases + b.leases == burst // size + 2
        wait = await a.take("7:0000abcd")
        assert wait > 0 and a.leases + b.leases == burst // size + 2
        assert await a.take("7:other000") == 0.0  # another key has its own bucket
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_the_bucket_refills_by_the_time_elapsed_up_to_the_burst(fresh_dsn):
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=1)
    try:
        first = await lease_tokens(pool, 1, "k", 10, rate_per_s=2, burst=10)
        assert (first.granted, first.left) == (10, pytest.approx(0, abs=0.01))
        empty = await lease_tokens(pool, 1, "k", 10, rate_per_s=2, burst=10)
        assert empty.granted == 0 and 0 < empty.wait_s(2) <= 0.5
        async with pool.acquire() as conn:  # 3 s pass for the bucket: 6 tokens at 2/s
            await conn.execute("UPDATE rate_buckets SET refilled_at = refilled_at - interval '3 s'")
        assert (await lease_tokens(pool, 1, "k", 4, rate_per_s=2, burst=10)).granted == 4
        async with pool.acquire() as conn:  # an hour: the bucket is full, not fuller
            await conn.execute(
                "UPDATE rate_buckets SET refilled_at = refilled_at - interval '1 hour'"
            )
        assert (await lease_tokens(pool, 1, "k", 100, rate_per_s=2, burst=10)).granted == 10
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_concurrent_requests_of_an_empty_purse_wait_for_one_lease():
    calls = []

    async def lease(name: str, want: int) -> tuple[int, float]:
        calls.append(want)
        await anyio.sleep(0.05)
        return want, 0.0

    buckets = LeasedBuckets(lease, 50, TokenBuckets(1, 1))
    waits = []

    async def one() -> None:
        waits.append(await buckets.take("k"))

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(one)
    assert waits == [0.0] * 30 and calls == [50] and buckets.unspent("k") == 20


def _connections_on_both_workers(server, pids) -> dict[int, socket.socket]:
    """One keep-alive connection held by each worker (the kernel picks which one accepts:
    connections are opened, and kept open, until each worker holds one)."""
    port = int(server.base.rsplit(":", 1)[1])
    held: dict[int, socket.socket] = {}
    opened: list[socket.socket] = []
    deadline = time.monotonic() + 20
    while len(held) < len(pids) and time.monotonic() < deadline:
        batch = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        opened += batch
        for sock in batch:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in batch:
            read_responses(sock, count=1)
            owner = connection_owner(server, sock)
            if owner in pids and owner not in held:
                held[owner] = sock
    for sock in opened:
        if sock not in held.values():
            sock.close()
    assert len(held) == len(pids), f"no connection on every worker: {sorted(held)}"
    return held


def test_the_limit_holds_across_two_worker_processes(blank_dsn, tmp_path):
    rate, burst, lease_s = 1.0, 40, 5.0  # leases of 5 tokens
    size = lease_size(rate, burst, lease_s)
    env = {
        "ANALYTICS_RATE_LIMIT_PER_S": str(rate),
        "ANALYTICS_RATE_LIMIT_BURST": str(burst),
        "ANALYTICS_RATE_LIMIT_LEASE_S": str(lease_s),
        "ANALYTICS_DATA_DIR": str(tmp_path),
    }
    with running_server(blank_dsn, "--workers", "2", **env) as server:
        pids = wait_for_workers(server, 2)
        conns = _connections_on_both_workers(server, pids)
        statuses: dict[int, list[int]] = {pid: [] for pid in pids}
        started = time.monotonic()
        for _ in range(60):  # 120 requests, alternating between the workers
            for pid, sock in conns.items():
                sock.sendall(
                    b"GET /v1/metrics?event=limited&interval=hour HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {server.keys['read']}\r\n\r\n".encode()
                )
                (response,), _ = read_responses(sock, count=1)
                statuses[pid].append(response.status)
        elapsed = time.monotonic() - started
        for sock in conns.values():
            sock.close()
    admitted = sum(s == 200 for per_worker in statuses.values() for s in per_worker)
    assert {s for per_worker in statuses.values() for s in per_worker} == {200, 429}
    assert all(200 in per_worker for per_worker in statuses.values())  # both admitted some
    # Per-process buckets would admit up to 2 * burst (80) here.
    assert burst - 2 * size <= admitted <= burst + rate * elapsed + 2 * size
    # One lease call per `size` admitted requests, plus the empty ones of each worker.
    (bucket,) = fetch(blank_dsn, "SELECT tokens FROM rate_buckets")
    assert bucket["tokens"] < 1


@pytest.mark.anyio
async def test_while_the_database_is_unreachable_a_worker_limits_on_its_own():
    calls = []

    async def unreachable(name: str, want: int) -> tuple[int, float]:
        calls.append(name)
        raise ConnectionRefusedError("connection refused")

    buckets = LeasedBuckets(unreachable, 5, TokenBuckets(rate_per_s=0.001, burst=3))
    key = KeyInfo(1, "0000abcd", frozenset({"write"}))
    for _ in range(3):  # the per-process bucket's burst, not a 503 nor a 500
        await rate_limit(buckets, key)
    with pytest.raises(ApiError) as refused:
        await rate_limit(buckets, key)
    assert refused.value.status == 429
    assert calls == ["1:0000abcd"]  # one failed lease, then local for DEGRADED_S


@pytest.mark.anyio
async def test_a_lease_failing_for_another_reason_is_not_hidden():
    async def broken(name: str, want: int) -> tuple[int, float]:
        raise ValueError("a bug")

    buckets = LeasedBuckets(broken, 5, TokenBuckets(1, 1))
    with pytest.raises(ValueError):
        await rate_limit(buckets, KeyInfo(1, "0000abcd", frozenset({"write"})))
