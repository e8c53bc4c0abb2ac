"""runtime/gctune.py: start-up objects frozen out of the collector's passes, a raised young
threshold, cycles still collected, every pass timed for the metrics sampler."""

from __future__ import annotations

import gc
import weakref

from analytics.runtime import gctune


class _Node:
    pass


def test_tune_freezes_raises_the_threshold_and_cycles_are_still_collected():
    before = gc.get_threshold()
    try:
        gctune.tune(50_000)
        assert gc.get_threshold()[0] == 50_000 and gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        gctune.tune(50_000)  # once per process: a second app's objects are not frozen
        assert gc.get_freeze_count() == frozen
        gctune.drain()
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        gc.collect(0)
        assert gone() is None
        passes = gctune.drain()
        assert passes and passes[-1][0] == 0 and passes[-1][1] >= 0
        assert gctune.drain() == []
    finally:
        gc.set_threshold(*before)


def test_zero_keeps_pythons_thresholds():
    before = gc.get_threshold()
    gctune.tune(0)
    assert gc.get_threshold() == before
