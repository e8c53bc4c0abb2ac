"""The loop-agnostic runtime, on both AnyIO backends: limiters, offload, supervision,
token buckets, flags and the writer's shutdown ordering."""

from __future__ import annotations

import functools
import itertools
import logging
import threading

import anyio
import pytest

from analytics.runtime.flags import Flags
from analytics.runtime.offload import Offload
from analytics.runtime.querycache import Entry, QueryCache
from analytics.runtime.ratelimit import TokenBuckets
from analytics.runtime.supervise import supervised


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_offload_bounds_concurrency_per_named_limiter():
    offload = Offload({"billing_sdk": 2, "cpu": 1})
    running, peak = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def blocking_call() -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return threading.current_thread().name

    results = []

    async def call():
        results.append(await offload.run("billing_sdk", blocking_call))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
        with anyio.fail_after(5):
            # Polling a counter another subsystem owns; no event exists for it.
            while (  # noqa: ASYNC110
                offload.limiter("billing_sdk").statistics().tasks_waiting < 3 or running < 2
            ):
                await anyio.sleep(0.01)
        stats = {s.name: s for s in offload.stats()}
        assert (stats["billing_sdk"].borrowed, stats["billing_sdk"].waiting) == (2, 3)
        assert stats["cpu"].borrowed == 0
        release.set()
    assert peak == 2 and len(results) == 5
    assert threading.main_thread().name not in results  # it never ran on the loop thread


@pytest.mark.anyio
async def test_unknown_limiter_is_an_error():
    with pytest.raises(KeyError, match="no limiter named"):
        await Offload({"cpu": 1}).run("nope", print)


@pytest.mark.anyio
async def test_supervised_restarts_a_crashing_job_with_backoff(caplog):
    calls = []

    async def job():
        calls.append(anyio.current_time())
        if len(calls) < 4:
            raise RuntimeError(f"crash {len(calls)}")

    with caplog.at_level(logging.ERROR), anyio.fail_after(5):
        await supervised("flaky", job, first_backoff_s=0.01)
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[2] > gaps[0]  # exponential backoff
    failures = [r for r in caplog.records if "job flaky failed" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)  # tracebacks logged


@pytest.mark.anyio
async def test_supervised_critical_job_takes_the_group_down():
    async def job():
        raise RuntimeError("fatal")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="fatal")):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(supervised, "critical", job, critical=True))
            await anyio.sleep_forever()


@pytest.mark.anyio
async def test_supervised_passes_cancellation_through():
    started = anyio.Event()

    async def job():
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervised, "forever", job)
        await started.wait()
        tg.cancel_scope.cancel()  # exits at once: shutdown is not a crash to restart


@pytest.mark.anyio
async def test_flags_notify_waiters_on_change():
    flags = Flags({"billing_dispatch": True})
    assert flags.enabled("billing_dispatch") and flags.enabled("enrichment")
    changed = flags.changed
    flags.apply({"billing_dispatch": True})  # no change, no wake-up
    assert not changed.is_set()
    flags.apply({"billing_dispatch": False, "bogus": True})
    assert changed.is_set() and not flags.enabled("billing_dispatch")
    with pytest.raises(ValueError):
        Flags({"bogus": True})


def test_token_buckets():
    buckets = TokenBuckets(rate_per_s=10, burst=3)
    now = 100.0
    assert [buckets.take("k", now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", now) == pytest.approx(0.1)
    assert buckets.take("other", now) == 0.0
    assert buckets.take("k", now + 0.2) == 0.0


def test_query_cache_invalidates_overlapping_ranges_only():
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    cache = QueryCache()
    gen = cache.generation(1, "x")
    cache.put("a", Entry.of(1, "x", t0, t0 + timedelta(hours=1), b"A"), gen)
    cache.put("b", Entry.of(1, "x", t0 + timedelta(hours=2), t0 + timedelta(hours=3), b"B"), gen)
    cache.put("c", Entry.of(2, "x", t0, t0 + timedelta(hours=1), b"C"), gen)
    inside = int((t0 + timedelta(minutes=30)).timestamp() * 1e6)
    cache.invalidate(1, "x", inside, inside)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, b"B", b"C")
    # A result computed before an invalidation is not stored after it.
    cache.put("a", Entry.of(1, "x", t0, t0 + timedelta(hours=1), b"old"), gen)
    assert cache.get("a") is None
