"""Normalize + encode throughput: Rust vs the pure-Python reference vs orjson + Python rules,
and how each scales from one thread to two (the Rust call releases the GIL; Python cannot).

Run with `just bench`. Its one table (benches/conftest.py) gives each benchmark's median time
per call and one throughput figure, events/s: the events a call handles (`extra_info
["events"]`, set by each benchmark here) over that median. Then the ratios of those figures:
Rust over the reference, two threads over one.
"""

import threading

import orjson
import pytest

from analytics.normalize import normalize_batch
from benches import normalize_reference as reference
from conftest import NOW_US, batch_body, single_event_body

SINGLE = single_event_body()
BATCH = batch_body(1000)

IMPLEMENTATIONS = {
    "rust": lambda body: normalize_batch(body, NOW_US, customer_id="c"),
    "reference": lambda body: reference.normalize_batch(body, NOW_US, customer_id="c"),
    "orjson_rules": lambda body: reference.normalize_batch(
        body, NOW_US, customer_id="c", loads=orjson.loads
    ),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_single_event(benchmark, impl):
    fn = IMPLEMENTATIONS[impl]
    assert fn(SINGLE).accepted == 1
    benchmark.extra_info["events"] = 1
    benchmark(fn, SINGLE)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_batch_1000(benchmark, impl):
    fn = IMPLEMENTATIONS[impl]
    assert fn(BATCH).accepted == 1000
    benchmark.extra_info["events"] = 1000
    benchmark.pedantic(fn, args=(BATCH,), rounds=20 if impl == "rust" else 5, warmup_rounds=1)


def run_in_threads(fn, threads: int, batches_per_thread: int) -> None:
    def work():
        for _ in range(batches_per_thread):
            fn(BATCH)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("impl", ["rust", "reference"])
def test_gil_scaling(benchmark, impl, threads):
    """The same total work (4 batches of 1000) on 1 thread or split over 2."""
    total_batches = 4
    benchmark.extra_info["events"] = 1000 * total_batches
    benchmark.pedantic(
        run_in_threads,
        args=(IMPLEMENTATIONS[impl], threads, total_batches // threads),
        rounds=10 if impl == "rust" else 3,
        warmup_rounds=1,
    )
