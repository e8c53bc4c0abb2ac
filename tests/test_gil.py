"""The Rust calls release the GIL for their whole duration.

With a huge switch interval the interpreter never asks a thread to give up the GIL, so the
main thread can run during a worker's call only if the call released the GIL itself. No
timing is asserted: only whether the main thread ran at all while the call was in progress.
"""

import json
import sys
import threading

import pytest

from analytics.normalize import hll_build, hll_merge, normalize_batch, sign, verify_signature

BIG_BATCH = json.dumps(
    {"events": [{"name": f"e{i}", "properties": {"k": "v" * 1000, "i": i}} for i in range(4000)]}
).encode()


@pytest.fixture
def long_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    yield
    sys.setswitchinterval(old)


def main_thread_progress_during(call) -> int:
    started, done = threading.Event(), threading.Event()

    def worker():
        started.set()
        call()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    spins = 0
    while not done.is_set():
        spins += 1
    thread.join()
    return spins


def test_normalize_batch_releases_the_gil(long_switch_interval):
    assert main_thread_progress_during(lambda: normalize_batch(BIG_BATCH, 0)) > 0


def test_verify_signature_releases_the_gil(long_switch_interval):
    body = b"x" * (64 * 1024 * 1024)
    header = sign(b"k", body, 100)
    assert main_thread_progress_during(lambda: verify_signature(b"k", header, body, 100)) > 0


def test_hll_build_releases_the_gil(long_switch_interval):
    ids = [f"user-{i}" for i in range(500_000)]
    assert main_thread_progress_during(lambda: hll_build(ids, 18)) > 0


def test_hll_merge_releases_the_gil(long_switch_interval):
    dense = [hll_build([f"user-{k}-{i}" for i in range(100_000)], 18) for k in range(4)]
    assert main_thread_progress_during(lambda: hll_merge(dense * 50)) > 0


def test_a_pure_python_call_does_not(long_switch_interval):
    # The control: proves the method can fail. A Python loop never releases the GIL.
    assert main_thread_progress_during(lambda: sum(range(3_000_000))) == 0
