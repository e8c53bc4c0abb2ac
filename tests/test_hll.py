"""HyperLogLog sketches of user ids (rust/normalize/src/hll.rs) through analytics.normalize:
the byte format, estimates against exact counts, merges equal to the sketch of the union,
bad input refused (tests/test_gil.py: the GIL released while they work)."""

from __future__ import annotations

import random
import struct

import pytest

from analytics.normalize import (
    HLL_DEFAULT_PRECISION,
    HLL_VERSION,
    hll_build,
    hll_estimate,
    hll_merge,
    hll_standard_error,
)


def users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def test_a_bucket_of_three_users_is_a_few_bytes_and_counts_three():
    sketch = hll_build(["alice", "bob", "carol", "bob"])
    assert sketch[:3] == bytes([HLL_VERSION, HLL_DEFAULT_PRECISION, 1])  # version, p, sparse
    assert len(sketch) == 3 + 3 * 4
    assert hll_estimate(sketch) == pytest.approx(3, abs=0.01)
    assert hll_estimate(hll_build([])) == 0


def test_a_large_set_is_dense_at_2_to_the_p_bytes():
    for p in (10, 12, 14):
        sketch = hll_build(users("d", 50_000), p)
        assert sketch[:3] == bytes([HLL_VERSION, p, 2]) and len(sketch) == 3 + 2**p


def test_the_standard_error_is_1_04_over_the_root_of_m():
    assert hll_standard_error() == pytest.approx(1.04 / 64)  # m = 4096
    assert hll_standard_error(14) == pytest.approx(1.04 / 128)
    with pytest.raises(ValueError, match="precision"):
        hll_standard_error(19)


@pytest.mark.parametrize("n", [1, 7, 100, 1_000, 3_000, 10_000, 60_000, 300_000])
def test_estimates_are_within_4_standard_errors_of_the_exact_count(n):
    rng = random.Random(n)
    ids = [f"user-{rng.getrandbits(64):x}" for _ in range(n)]
    exact = len(set(ids))
    got = hll_estimate(hll_build(ids))
    assert abs(got - exact) <= max(4 * hll_standard_error() * exact, 0.5), (got, exact)


def test_merging_days_of_buckets_is_the_sketch_of_all_their_users():
    # 30 daily buckets of 20,000 users with the usual overlap between days.
    rng = random.Random(11)
    days = [
        [f"u{rng.randrange(20_000)}" for _ in range(rng.randrange(50, 3_000))] for _ in range(30)
    ]
    sketches = [hll_build(day) for day in days]
    everyone = [u for day in days for u in day]
    merged = hll_merge(sketches)
    assert merged == hll_build(everyone)
    assert merged == hll_merge(list(reversed(sketches)))
    assert merged == hll_merge([hll_merge(sketches[:10]), hll_merge(sketches[10:])])
    exact = len(set(everyone))
    assert abs(hll_estimate(merged) - exact) <= 4 * hll_standard_error() * exact
    assert hll_merge([sketches[0]]) == sketches[0]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01\x0c",
        b"\x02\x0c\x01",  # another version
        b"\x01\x03\x01",  # precision below 4
        b"\x01\x0c\x03",  # no such form
        b"\x01\x0c\x01\x00\x00",  # a sparse entry cut short
        b"\x01\x0c\x02" + bytes(100),  # dense with too few registers
        b"\x01\x0c\x01" + struct.pack("<II", 5 << 6 | 1, 4 << 6 | 1),  # entries out of order
    ],
)
def test_bytes_that_are_not_a_sketch_are_refused(bad):
    with pytest.raises(ValueError):
        hll_estimate(bad)
    with pytest.raises(ValueError):
        hll_merge([hll_build(["a"]), bad])


def test_sketches_of_other_precisions_or_none_do_not_merge():
    with pytest.raises(ValueError, match="precision"):
        hll_merge([hll_build(["a"], 10), hll_build(["a"], 12)])
    with pytest.raises(ValueError, match="no sketch"):
        hll_merge([])
    for bad in (3, 19, -1, 256):
        with pytest.raises(ValueError, match="precision"):
            hll_build(["a"], bad)
